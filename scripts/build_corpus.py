#!/usr/bin/env python3
"""Build the corpus and tokenizer of pvq's embedded reference model.

The corpus is the ``.py`` source of the CPython standard library of the
interpreter that runs this script (the shipped model was built from CPython
3.11.7; ``site-packages`` is skipped). Files are split deterministically by a
salted SHA-256 of their path relative to the stdlib root:

* ``heldout`` (shipped as ``pvq/assets/reference/heldout.txt``): library
  modules (no tests, no generated tables, at most 100 KB each), taken in order
  of ``sha256("heldout:" + path)`` until the text reaches ``--heldout-bytes``
  (a file that would overshoot that by more than 10% is passed over).
* ``val`` (not shipped): chosen the same way from the rest with the salt
  ``"val:"``; used only to pick the best checkpoint during training, so that
  the reported held-out perplexity is not selected on.
* ``train``: every other file, tests included.
* ``calib`` (shipped as ``calib.txt``): a subset of ``train`` chosen like
  ``heldout`` with the salt ``"calib:"``, for calibrating quantization.

Each split's text is its files in sorted path order, each preceded by a
separator line ``# ==== file: <path> ====``. The script then trains a
byte-level BPE tokenizer (vocab 8192) on the train text, saves it where
``transformers.AutoTokenizer`` loads it, and writes the token streams as
uint16 ``.npy`` files into ``<data-dir>/tokens`` (git-ignored) for training.

Usage (from the repository root)::

    python scripts/build_corpus.py            # writes .data/reference and pvq/assets/reference
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO / ".data" / "reference"
DEFAULT_ASSET_DIR = REPO / "pvq" / "assets" / "reference"

SPLITS = ("heldout", "val", "train", "calib")
SHIPPED_FROM = "3.11.7"  # the CPython whose stdlib built the shipped files
VOCAB_SIZE = 8192
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>"]  # ids 0 and 1
# Llama-3 style split: letters runs, numbers in groups of <= 3, punctuation
# runs, newlines (with preceding spaces), other whitespace. Each piece is then
# mapped to bytes (ByteLevel), so any input is encodable without <unk>.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TEST_DIR_NAMES = {"test", "tests", "idle_test"}
GENERATED_PREFIXES = ("encodings/", "pydoc_data/", "_sysconfigdata")
MAX_EVAL_FILE_BYTES = 100_000


def separator(rel: str) -> str:
    """The line that starts each file in a split's text."""
    return f"# ==== file: {rel} ====\n"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rank_key(salt: str, rel: str) -> str:
    """Deterministic pseudo-random rank of a file for a given split."""
    return sha256_hex(f"{salt}:{rel}".encode())


def is_test_file(rel: str) -> bool:
    parts = rel.split("/")
    return any(p in TEST_DIR_NAMES for p in parts[:-1]) or parts[-1].startswith("test_")


def eval_eligible(rel: str, size: int) -> bool:
    """Files that may go to heldout/val/calib: hand-written library modules."""
    return (not is_test_file(rel) and not rel.startswith(GENERATED_PREFIXES)
            and size <= MAX_EVAL_FILE_BYTES)


def collect_sources(stdlib: Path) -> tuple[dict[str, str], list[str]]:
    """All UTF-8 ``.py`` files under ``stdlib`` (site-packages skipped).

    Returns ({relative posix path: text}, [paths skipped as non-UTF-8]).
    """
    sources: dict[str, str] = {}
    skipped: list[str] = []
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "__pycache__"))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = Path(root) / name
            rel = path.relative_to(stdlib).as_posix()
            try:
                text = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                skipped.append(rel)
                continue
            if "\r" in text:
                text = text.replace("\r\n", "\n").replace("\r", "\n")
            sources[rel] = text
    return dict(sorted(sources.items())), sorted(skipped)


def take_by_rank(candidates: list[str], sources: dict[str, str], salt: str,
                 target_bytes: int) -> list[str]:
    """Files from ``candidates`` in order of rank_key(salt, path), until their
    UTF-8 size reaches ``target_bytes``; a file that would take the total past
    110% of the target is passed over. Returned in sorted path order."""
    chosen, total = [], 0
    for rel in sorted(candidates, key=lambda r: rank_key(salt, r)):
        if total >= target_bytes:
            break
        size = len(sources[rel].encode())
        if total + size > 1.1 * target_bytes:
            continue
        chosen.append(rel)
        total += size
    return sorted(chosen)


def split_files(sources: dict[str, str], heldout_bytes: int, val_bytes: int,
                calib_bytes: int) -> dict[str, list[str]]:
    """Deterministic split by file: {"heldout", "val", "train", "calib"}."""
    eligible = [r for r, t in sources.items() if eval_eligible(r, len(t.encode()))]
    heldout = take_by_rank(eligible, sources, "heldout", heldout_bytes)
    rest = [r for r in eligible if r not in set(heldout)]
    val = take_by_rank(rest, sources, "val", val_bytes)
    excluded = set(heldout) | set(val)
    train = [r for r in sources if r not in excluded]
    calib_pool = [r for r in train if eval_eligible(r, len(sources[r].encode()))]
    calib = take_by_rank(calib_pool, sources, "calib", calib_bytes)
    return {"heldout": heldout, "val": val, "train": train, "calib": calib}


def join_split(files: list[str], sources: dict[str, str]) -> str:
    """A split's text: each file (sorted path order) after its separator line."""
    parts = []
    for rel in sorted(files):
        text = sources[rel]
        if not text.endswith("\n"):
            text += "\n"
        parts.append(separator(rel) + text)
    return "".join(parts)


def train_tokenizer(train_text: str, vocab_size: int):
    """Byte-level BPE (tokenizers library) trained on ``train_text``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # Feed the text file by file so that pieces never straddle two files.
    chunks = train_text.split("\n# ==== file: ")
    tok.train_from_iterator(chunks, trainer=trainer, length=len(chunks))
    if tok.get_vocab_size() != vocab_size:
        raise SystemExit(f"tokenizer has {tok.get_vocab_size()} tokens, wanted {vocab_size}")
    return tok


def save_tokenizer(tok, out_dir: Path) -> None:
    """Save so that ``AutoTokenizer.from_pretrained(out_dir)`` loads it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": SPECIAL_TOKENS[0],
        "eos_token": SPECIAL_TOKENS[0],
        "unk_token": None,
        "pad_token": SPECIAL_TOKENS[1],
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": SPECIAL_TOKENS[0], "eos_token": SPECIAL_TOKENS[0],
         "pad_token": SPECIAL_TOKENS[1]}, indent=2) + "\n")


def encode(tok, text: str) -> np.ndarray:
    """Token ids of ``text`` as uint16 (the whole text in one call, no specials)."""
    ids = tok.encode(text, add_special_tokens=False).ids
    arr = np.asarray(ids, dtype=np.uint16)
    assert int(arr.max()) < VOCAB_SIZE
    return arr


def manifest_markdown(manifest: dict) -> str:
    """The corpus section of the model card (between the manifest markers)."""
    lines = [
        f"Source: CPython {manifest['python_version']} standard library "
        f"(`{manifest['stdlib']}`), {manifest['n_files']} UTF-8 `.py` files, "
        f"{manifest['n_bytes']:,} bytes; `site-packages` skipped; "
        f"{len(manifest['skipped_non_utf8'])} non-UTF-8 files skipped "
        f"({', '.join('`%s`' % s for s in manifest['skipped_non_utf8'])}).",
        "",
        "| split | files | bytes | tokens | sha256 of the split text |",
        "|---|---|---|---|---|",
    ]
    for name in ("train", "val", "heldout", "calib"):
        s = manifest["splits"][name]
        lines.append(f"| {name} | {len(s['files'])} | {s['bytes']:,} | {s['tokens']:,} "
                     f"| `{s['sha256']}` |")
    for name, shipped in (("heldout", "heldout.txt"), ("calib", "calib.txt")):
        s = manifest["splits"][name]
        lines += ["", f"<details><summary>{shipped}: {len(s['files'])} files "
                  "(path, sha256 of the source file)</summary>", "", "```"]
        lines += [f"{rel}  {digest}" for rel, digest in s["files"].items()]
        lines += ["```", "", "</details>"]
    return "\n".join(lines) + "\n"


MANIFEST_BEGIN = "<!-- corpus-manifest:begin -->"
MANIFEST_END = "<!-- corpus-manifest:end -->"


def update_model_card(card: Path, section: str) -> bool:
    """Replace the manifest section of an existing model card; False if absent."""
    if not card.exists():
        return False
    text = card.read_text()
    if MANIFEST_BEGIN not in text or MANIFEST_END not in text:
        return False
    head, rest = text.split(MANIFEST_BEGIN, 1)
    _, tail = rest.split(MANIFEST_END, 1)
    card.write_text(head + MANIFEST_BEGIN + "\n" + section + MANIFEST_END + tail)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stdlib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]),
                    help="stdlib root (default: this interpreter's)")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                    help="git-ignored output dir for train/val text and token .npy files")
    ap.add_argument("--asset-dir", type=Path, default=DEFAULT_ASSET_DIR,
                    help="shipped model dir: heldout.txt, calib.txt, tokenizer files")
    ap.add_argument("--heldout-bytes", type=int, default=400_000)
    ap.add_argument("--val-bytes", type=int, default=300_000)
    ap.add_argument("--calib-bytes", type=int, default=300_000)
    ap.add_argument("--write-split", nargs=2, metavar=("SPLIT", "FILE"), default=None,
                    help="only write one split's text (train, val, heldout or calib) to FILE and stop: e.g. the val "
                         "split, text the model never trained on and the held-out set does not hold, to calibrate on")
    args = ap.parse_args(argv)
    if args.write_split and args.write_split[0] not in SPLITS:
        ap.error(f"--write-split takes one of {', '.join(SPLITS)}, got {args.write_split[0]}")

    t0 = time.time()
    version = ".".join(map(str, sys.version_info[:3]))
    if version != SHIPPED_FROM:
        print(f"warning: this is CPython {version}; the shipped files were built from "
              f"{SHIPPED_FROM}, so heldout.txt/calib.txt will differ", file=sys.stderr)
    stdlib = args.stdlib.resolve()
    sources, skipped = collect_sources(stdlib)
    if not sources:
        raise SystemExit(f"no .py files under {stdlib}")
    n_bytes = sum(len(t.encode()) for t in sources.values())
    print(f"[corpus] {len(sources)} files, {n_bytes:,} bytes from {stdlib} "
          f"({len(skipped)} non-UTF-8 skipped)")

    splits = split_files(sources, args.heldout_bytes, args.val_bytes, args.calib_bytes)
    if args.write_split:
        name, out = args.write_split
        Path(out).write_text(join_split(splits[name], sources))
        print(f"[corpus] {name}: {len(splits[name])} files written to {out}")
        return 0
    texts = {name: join_split(files, sources) for name, files in splits.items()}
    for name, files in splits.items():
        print(f"[corpus] {name:8s} {len(files):5d} files {len(texts[name].encode()):>12,} bytes")

    args.data_dir.mkdir(parents=True, exist_ok=True)
    args.asset_dir.mkdir(parents=True, exist_ok=True)
    for name in ("train", "val"):
        (args.data_dir / f"{name}.txt").write_text(texts[name])
    for name in ("heldout", "calib"):
        (args.asset_dir / f"{name}.txt").write_text(texts[name])

    t1 = time.time()
    tok = train_tokenizer(texts["train"], VOCAB_SIZE)
    print(f"[tokenizer] byte-level BPE, vocab {tok.get_vocab_size()}, trained in {time.time() - t1:.1f}s")
    tok_dir = args.data_dir / "tokenizer"
    save_tokenizer(tok, tok_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(tok_dir / name, args.asset_dir / name)

    tokens_dir = args.data_dir / "tokens"  # what travels to the GPU machine
    tokens_dir.mkdir(exist_ok=True)
    manifest = {
        "python_version": version, "stdlib": str(stdlib), "n_files": len(sources),
        "n_bytes": n_bytes, "skipped_non_utf8": skipped, "separator": separator("<path>"),
        "vocab_size": VOCAB_SIZE, "special_tokens": SPECIAL_TOKENS, "splits": {},
    }
    for name, files in splits.items():
        ids = encode(tok, texts[name])
        if name in ("train", "val", "heldout"):
            np.save(tokens_dir / f"{name}.npy", ids)
        data = texts[name].encode()
        manifest["splits"][name] = {
            "bytes": len(data), "tokens": int(ids.size), "sha256": sha256_hex(data),
            "files": {rel: sha256_hex(sources[rel].encode()) for rel in files},
        }
        print(f"[tokens] {name:8s} {ids.size:>11,} tokens ({len(data) / ids.size:.2f} bytes/token)")
    (args.data_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    section = manifest_markdown(manifest)
    (args.data_dir / "manifest.md").write_text(section)
    card = args.asset_dir / "README.md"
    if update_model_card(card, section):
        print(f"[card] updated the corpus manifest in {card}")
    else:
        print(f"[card] no manifest markers in {card}; section written to {args.data_dir / 'manifest.md'}")
    print(f"[done] {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
