"""Build the offline zero-shot task ``pvq_heldout`` from the reference model's held-out text.

Every item is one line of a held-out Python module: the context is the lines
before it in the same file (at most ``--context-lines`` lines and
``--context-chars`` characters, never crossing into another file), and the
choices are the true next line and three other lines drawn from elsewhere in the
same file (distinct from it and from each other), all re-indented to the true line's indentation (so indentation alone
gives nothing away) and ending with a newline. The position of the true line
among the choices is random, and so is the order of the items (the harness's
``--limit N`` takes the first N, a uniform sample). Everything is seeded; the same ``heldout.txt``
gives the same JSONL byte for byte.

Only ``pvq/assets/reference/heldout.txt`` is read: the calibration text
(``calib.txt``, a subset of the training split) never enters the task.

    python scripts/build_heldout_task.py            # writes pvq/eval/tasks/pvq_heldout/pvq_heldout.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELDOUT = ROOT / "pvq" / "assets" / "reference" / "heldout.txt"
OUT = ROOT / "pvq" / "eval" / "tasks" / "pvq_heldout" / "pvq_heldout.jsonl"
HEADER = re.compile(r"^# ==== file: (.+) ====$")


def split_files(text: str) -> list[tuple[str, list[str]]]:
    """(path, lines) of every file in a pvq split text (files start with a ``# ==== file:`` line)."""
    files: list[tuple[str, list[str]]] = []
    for line in text.split("\n"):
        m = HEADER.match(line)
        if m:
            files.append((m.group(1), []))
        elif files:
            files[-1][1].append(line)
    if files and files[-1][1] and files[-1][1][-1] == "":
        files[-1][1].pop()  # the final newline of the text
    return files


def usable(content: str, min_chars: int, max_chars: int) -> bool:
    return min_chars <= len(content) <= max_chars


def build(args: argparse.Namespace) -> list[dict]:
    text = HELDOUT.read_text(encoding="utf-8")
    files = split_files(text)
    rng = random.Random(args.seed)
    candidates = []  # (file index, line index)
    pools = []
    for fi, (_, lines) in enumerate(files):
        stripped = [ln.strip() for ln in lines]
        pool = sorted({s for s in stripped if usable(s, args.min_chars, args.max_chars)})
        pools.append(pool)
        for li in range(args.min_context_lines, len(lines)):
            if usable(stripped[li], args.min_chars, args.max_chars) and len(pool) > 3:
                candidates.append((fi, li))
    rng.shuffle(candidates)
    cap = int(args.max_file_share * args.items)  # no file takes more than this share of the items
    per_file: dict[int, int] = {}
    items = []
    for fi, li in candidates:
        if len(items) == args.items:
            break
        if per_file.get(fi, 0) >= cap:
            continue
        path, lines = files[fi]
        true = lines[li]
        content = true.strip()
        indent = true[: len(true) - len(true.lstrip())]
        others = [s for s in pools[fi] if s != content]
        distractors = rng.sample(others, 3)
        choices = [indent + s + "\n" for s in [content, *distractors]]
        order = list(range(4))
        rng.shuffle(order)
        choices = [choices[k] for k in order]
        label = order.index(0)
        # context: whole preceding lines of the same file, nearest first, within both budgets
        ctx: list[str] = []
        size = 0
        for prev in reversed(lines[max(0, li - args.context_lines) : li]):
            if ctx and size + len(prev) + 1 > args.context_chars:
                break
            ctx.insert(0, prev)
            size += len(prev) + 1
        context = "\n".join(ctx) + "\n"
        if len(context) > args.context_chars:  # one long line: keep its end
            context = context[-args.context_chars :]
        per_file[fi] = per_file.get(fi, 0) + 1
        items.append({"file": path, "line": li + 1, "context": context, "choices": choices, "label": label})
    if len(items) < args.items:
        raise SystemExit(f"only {len(items)} items could be built; lower --items or --max-file-share")
    # the file order is shuffled (seeded): the harness's --limit N takes the first N items, which are
    # then a uniform sample of the whole task, not its first files
    for k, d in enumerate(items):
        d["id"] = k
    return items


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=2500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--context-lines", type=int, default=12, help="at most this many preceding lines")
    p.add_argument("--context-chars", type=int, default=400, help="at most this many characters of context")
    p.add_argument("--min-context-lines", type=int, default=3, help="skip the first lines of every file")
    p.add_argument("--min-chars", type=int, default=6, help="shortest line content (stripped) used as a choice")
    p.add_argument("--max-chars", type=int, default=100, help="longest line content (stripped) used as a choice")
    p.add_argument("--max-file-share", type=float, default=0.08, help="most items taken from one file")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    items = build(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps({k: d[k] for k in ("id", "file", "line", "context", "choices", "label")},
                              ensure_ascii=False) + "\n" for d in items)
    args.out.write_text(data, encoding="utf-8")
    files = len({d["file"] for d in items})
    print(f"{len(items)} items from {files} files, {len(data.encode()):,} bytes -> {args.out}")
    print(f"sha256 {hashlib.sha256(data.encode()).hexdigest()}")


if __name__ == "__main__":
    main()
