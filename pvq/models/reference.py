"""The embedded reference model: the default model of every ``pvq`` command.

A 15.8M-parameter Llama trained on the CPython 3.11 standard library, shipped
in ``pvq/assets/reference`` with its tokenizer, a held-out evaluation text and a
calibration text (see that directory's README, the model card).
"""

from __future__ import annotations

from pathlib import Path

REFERENCE_DIR = Path(__file__).resolve().parent.parent / "assets" / "reference"
REFERENCE_NAME = "reference"
HELDOUT_TEXT = REFERENCE_DIR / "heldout.txt"
CALIB_TEXT = REFERENCE_DIR / "calib.txt"


def resolve_model(name_or_path: str | None) -> str:
    """A hub id or local directory; ``None`` or ``"reference"`` give the embedded model."""
    if name_or_path in (None, "", REFERENCE_NAME):
        return str(REFERENCE_DIR)
    return str(name_or_path)
