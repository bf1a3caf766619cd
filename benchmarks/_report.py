"""What the table benchmarks write: ``PREFIX.json`` (the rows and how they were made) and ``PREFIX.md``."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(prefix: str, out: dict, md: str) -> None:
    """Write ``out`` as ``prefix.json`` and ``md`` as ``prefix.md`` (folders made; nothing for an empty prefix)."""
    if not prefix:
        return
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    Path(prefix + ".json").write_text(json.dumps(out, indent=2) + "\n")
    Path(prefix + ".md").write_text(md)
