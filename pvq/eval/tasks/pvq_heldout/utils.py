"""Data loader of the ``pvq_heldout`` task: the JSONL next to this file, read without any download."""

import json
from pathlib import Path

DATA = Path(__file__).resolve().parent / "pvq_heldout.jsonl"


def load_pvq_heldout(**_):
    """The task's data as a ``datasets.DatasetDict`` with one ``test`` split (no cache, no network)."""
    import datasets

    with open(DATA, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
