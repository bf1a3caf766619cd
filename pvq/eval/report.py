"""Plain-text tables for the command line."""

from __future__ import annotations

from typing import Any, Sequence


def _cell(value: Any, fmt: str | None) -> str:
    if value is None:
        return "-"
    if fmt and isinstance(value, (int, float)):
        return format(value, fmt)
    return str(value)


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str | None]]) -> str:
    """Render ``rows`` as an aligned table; ``columns`` are (key, header, format spec)."""
    header = [h for _, h, _ in columns]
    body = [[_cell(r.get(k), f) for k, _, f in columns] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    return "\n".join(out)
