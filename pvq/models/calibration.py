"""Calibration and evaluation text: loading, tokenizing, seeded random windows.

* :func:`load_text` reads a text file, a directory (every ``*.txt``, ``*.py``
  and ``*.md`` file below it, recursively, in sorted order, joined by blank
  lines) or a ``datasets`` name ``"name[:config[:split]]"`` such as
  ``"wikitext:wikitext-2-raw-v1:train"`` (needs the ``datasets`` package and
  hub access or a local cache).
* :func:`tokenize_text` turns text into a 1-D LongTensor of token ids.
* :func:`calibration_batches` draws ``n_samples`` windows of ``seq_len``
  tokens at seeded random offsets: a LongTensor ``[n_samples, seq_len]``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pvq.errors import CalibrationError

__all__ = ["CalibrationError", "TEXT_SUFFIXES", "calibration_batches", "check_calibration", "load_text", "tokenize_text"]

TEXT_SUFFIXES = (".txt", ".py", ".md")


def load_text(source: str | Path) -> str:
    """The text of a file, a directory of text files, or a ``datasets`` name.

    A directory gives all ``*.txt``/``*.py``/``*.md`` files below it (sorted
    by relative path), separated by blank lines. A string that is not an
    existing path is read as ``"name[:config[:split]]"`` of a Hugging Face
    dataset (split defaults to ``train``); its first string column (``text``
    if present) is joined with blank lines.
    """
    path = Path(source)
    if path.is_file():
        return _read(path)
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES),
            key=lambda p: p.relative_to(path).as_posix(),
        )
        if not files:
            raise CalibrationError(
                f"directory {str(path)!r} holds no {'/'.join('*' + s for s in TEXT_SUFFIXES)} files; "
                "point to a text file or a directory of text files"
            )
        return "\n\n".join(_read(p) for p in files)
    return _load_dataset_text(str(source))


def _read(path: Path) -> str:
    """UTF-8 text of a file; binary or non-UTF-8 files are refused (never replaced silently)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CalibrationError(f"cannot read {str(path)!r}: {e.strerror or e}") from e
    if b"\x00" in data:
        raise CalibrationError(f"{str(path)!r} is a binary file (it holds NUL bytes), not text; give a UTF-8 text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CalibrationError(
            f"{str(path)!r} is not UTF-8 text (invalid byte at offset {e.start}); convert it to UTF-8 "
            "(e.g. iconv -t utf-8) or give another file"
        ) from e


def _load_dataset_text(source: str) -> str:
    parts = source.split(":")
    if len(parts) > 3 or not parts[0]:
        raise CalibrationError(
            f"{source!r} is neither an existing file or directory nor a dataset name "
            "'name[:config[:split]]' (e.g. 'wikitext:wikitext-2-raw-v1:test')"
        )
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    try:
        import datasets
    except ImportError as e:
        raise CalibrationError(
            f"{source!r} is not an existing file or directory; to read it as a Hugging Face dataset "
            "install the `datasets` package (pip install datasets), or pass a text file or directory"
        ) from e
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # hub, network, cache and name errors all end here
        raise CalibrationError(
            f"could not load dataset {name!r} (config {config!r}, split {split!r}): {type(e).__name__}: {e}. "
            "Without network access use a local text file or directory, or a dataset already in the "
            "datasets cache (HF_DATASETS_OFFLINE=1)"
        ) from e
    column = "text" if "text" in ds.column_names else None
    if column is None:
        for col, feat in ds.features.items():
            if getattr(feat, "dtype", None) == "string":
                column = col
                break
    if column is None:
        raise CalibrationError(f"dataset {source!r} has no string column; columns: {ds.column_names}")
    return "\n\n".join(t for t in ds[column] if t)


def tokenize_text(text: str, tokenizer) -> torch.Tensor:
    """Token ids ``[T]`` (int64) of ``text``, without special tokens.

    ``tokenizer``: a transformers tokenizer, any object with
    ``encode(text) -> list[int]``, or a callable ``text -> list[int]``.
    """
    if not isinstance(text, str):
        raise CalibrationError(f"text must be a str, got {type(text).__name__}")
    if hasattr(tokenizer, "encode"):
        try:
            ids = tokenizer.encode(text, add_special_tokens=False)
        except TypeError:
            ids = tokenizer.encode(text)
    elif callable(tokenizer):
        ids = tokenizer(text)
    else:
        raise CalibrationError(f"tokenizer must have encode() or be callable, got {type(tokenizer).__name__}")
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    if hasattr(ids, "ids"):  # a tokenizers.Encoding
        ids = ids.ids
    return torch.as_tensor(ids, dtype=torch.int64).reshape(-1)


def calibration_batches(
    text: str | torch.Tensor, tokenizer, n_samples: int, seq_len: int, seed: int = 0
) -> torch.Tensor:
    """``n_samples`` windows of ``seq_len`` consecutive tokens at seeded random offsets.

    text: the calibration text (or its token ids, a 1-D integer tensor; then
        ``tokenizer`` may be None).
    Returns a LongTensor ``[n_samples, seq_len]``. The same text, tokenizer and
    seed give the same windows on every machine (a ``torch.Generator`` seeded
    with ``seed`` draws the offsets).
    """
    for name, v, low in (("n_samples", n_samples, 1), ("seq_len", seq_len, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise CalibrationError(f"{name} must be an integer >= {low}, got {v!r}")
    if isinstance(text, torch.Tensor):
        if text.is_floating_point() or text.dim() != 1:
            raise CalibrationError(f"token ids must be a 1-D integer tensor, got {text.dtype} {tuple(text.shape)}")
        ids = text.long()
    else:
        if not isinstance(text, str):
            raise CalibrationError(f"text must be a str or a 1-D tensor of token ids, got {type(text).__name__}")
        if not text.strip():
            raise CalibrationError(
                "the calibration text is empty; point --calib at a non-empty text file, directory or dataset"
            )
        ids = tokenize_text(text, tokenizer)
    total = ids.numel()
    if total == 0:
        raise CalibrationError("the calibration text gives no tokens; use a longer text")
    if total < seq_len:
        raise CalibrationError(
            f"the calibration text has {total} tokens, fewer than seq_len={seq_len}; use a longer text "
            f"or a seq_len of at most {total}"
        )
    gen = torch.Generator().manual_seed(int(seed))
    starts = torch.randint(0, total - seq_len + 1, (n_samples,), generator=gen)
    offsets = torch.arange(seq_len)
    return ids[starts.unsqueeze(1) + offsets]


def check_calibration(calib_ids, model: torch.nn.Module) -> torch.Tensor:
    """Validate calibration token ids ``[n, L]`` (int) against the model's vocabulary."""
    if not isinstance(calib_ids, torch.Tensor):
        raise CalibrationError(f"calibration ids must be a LongTensor [n_samples, seq_len], got {type(calib_ids).__name__}")
    if calib_ids.dim() != 2 or calib_ids.shape[0] < 1 or calib_ids.shape[1] < 1:
        raise CalibrationError(
            f"calibration ids must have shape [n_samples, seq_len] with both >= 1, got {tuple(calib_ids.shape)}; "
            "build them with pvq.models.calibration_batches"
        )
    if calib_ids.dtype.is_floating_point or calib_ids.dtype == torch.bool:
        raise CalibrationError(f"calibration ids must be integer token ids, got {calib_ids.dtype}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    lo, hi = int(calib_ids.min()), int(calib_ids.max())
    if lo < 0 or (vocab is not None and hi >= vocab):
        raise CalibrationError(
            f"calibration ids span [{lo}, {hi}] but the model's vocabulary is [0, {vocab}); "
            "tokenize with the model's own tokenizer"
        )
    return calib_ids.long()
