"""Resumable quantization runs: finished decoder blocks kept beside the output path.

A run that writes a checkpoint at ``out`` keeps its work in progress in
``.<out name>.work-<digest>`` beside it (never at ``out``: the checkpoint still
arrives there by one atomic swap, :mod:`pvq.models.checkpoint`). After each
decoder block it writes the block's tensors (``block-00007.safetensors``, as
they are in memory: codes, scales, float32 norms) and its record
(``block-00007.json``: layer stats, the quantized modules' config entries),
each to a temporary name, synced, then renamed; the record last, so a block
counts as finished only when both are complete. A run started again with the
same arguments loads the finished blocks instead of quantizing them, runs them
on the calibration inputs to feed the next block (the same outputs, bit for bit:
a loaded layer decodes the same codes the solver produced), and continues at the
first unfinished block; the checkpoint it writes is byte-identical.

The digest covers what decides the result (:func:`run_identity`): the quantize
config, the model (config.json bytes; per weight file its size, mtime and
header), the calibration token ids, the device kind, the batch size, the pvq
and torch versions. A work directory of other arguments is refused, naming the
differences; ``--no-resume`` discards it. One run at a time holds a work
directory (an ``flock``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from pvq.errors import CheckpointError

from .driver import LayerStats
from .experts import QuantizedExperts
from .format import expert_entries, quantized_modules, replace_linears
from .structure import decoder_blocks

__all__ = ["WorkDir", "model_fingerprint", "run_identity", "write_atomic"]

_WORK = "work"
_IDENTITY = "identity.json"


def model_fingerprint(source: str | Path) -> dict:
    """What identifies a model's weights without reading them all: the sha256 of ``config.json``
    and, per ``*.safetensors`` / ``*.bin`` file, its size, mtime (ns) and the sha256 of its first
    64 KiB (the safetensors header). A name that is not a local directory is kept as the name."""
    path = Path(source)
    if not path.is_dir():
        return {"name": str(source)}
    out: dict = {"config": _sha256(path / "config.json") if (path / "config.json").is_file() else None, "files": {}}
    for f in sorted(list(path.glob("*.safetensors")) + list(path.glob("*.bin"))):
        st = f.stat()
        with open(f, "rb") as fh:
            head = hashlib.sha256(fh.read(1 << 16)).hexdigest()
        out["files"][f.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "head": head}
    return out


def run_identity(config, model: dict, calib_ids: torch.Tensor, device: torch.device, batch_size: int) -> dict:
    """The arguments that decide a run's result (see the module docstring); JSON-able."""
    from pvq import __version__

    ids = calib_ids.detach().to("cpu", torch.int64).contiguous()
    return {
        "config": config.to_dict(),
        "model": model,
        "calibration": {"shape": list(ids.shape), "sha256": hashlib.sha256(ids.numpy().tobytes()).hexdigest()},
        "device": torch.device(device).type,
        "batch_size": int(batch_size),
        "pvq": __version__,
        "torch": torch.__version__.split("+")[0],
    }


def _digest(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _differences(a, b, prefix="") -> list[str]:
    """Paths where two JSON values differ, ``"config.bits: 4 -> 3"``."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [f"{prefix}: {json.dumps(a)[:60]} -> {json.dumps(b)[:60]}"]


def write_atomic(path: Path, write) -> None:
    """``write(tmp_path)``, fsync, rename to ``path`` (a reader sees the old file or the complete new one)."""
    tmp = path.with_name(path.name + ".partial")
    write(tmp)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WorkDir:
    """The work in progress of one run on ``out_dir`` (see the module docstring).

    resume: False discards a work directory of earlier runs on ``out_dir`` (any arguments) and
    starts over; True (default) reuses one of the same arguments and refuses one of others.
    """

    def __init__(self, out_dir: str | Path, identity: dict, resume: bool = True, log=None, reader: bool = False):
        out_dir = Path(out_dir)
        self.identity = identity
        self.digest = _digest(identity)
        self.path = out_dir.parent / f".{out_dir.name}.{_WORK}-{self.digest}"
        self._lock_fd = None
        if reader:  # another rank of a distributed run: rank 0 made (and locks) the directory
            if not (self.path / _IDENTITY).is_file() or json.loads((self.path / _IDENTITY).read_text()) != identity:
                raise CheckpointError(f"{self.path} is not this run's work directory (made by rank 0)")
            return
        say = log or (lambda s: None)
        for other in sorted(out_dir.parent.glob(f".{out_dir.name}.{_WORK}-*")):
            if other == self.path and resume:
                continue
            if resume:
                try:
                    theirs = json.loads((other / _IDENTITY).read_text())
                except (OSError, ValueError):
                    theirs = {}
                diff = _differences(theirs, identity)
                raise CheckpointError(
                    f"{other} holds an unfinished run on {str(out_dir)!r} with other arguments "
                    f"({'; '.join(diff[:4]) or 'unreadable record'}); run again with the same arguments to resume "
                    "it, or pass --no-resume to discard it and start over"
                )
            fd = self._lock(other)  # refuses a directory that a live run holds
            shutil.rmtree(other)
            os.close(fd)
            say(f"discarded the unfinished run in {other.name} (--no-resume)")
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._lock(self.path)
        for stale in [*self.path.glob("activations-*.bin"), *self.path.glob("*.partial")]:
            stale.unlink()  # an interrupted run's activation file or half-written block file
        ident = self.path / _IDENTITY
        if ident.is_file():
            if json.loads(ident.read_text()) != identity:  # a digest collision or an edited record
                raise CheckpointError(f"{ident} does not match this run; remove {self.path} and start over")
        else:
            write_atomic(ident, lambda p: p.write_text(json.dumps(identity, indent=1, sort_keys=True)))
        done = self.finished()
        if done:
            say(f"resuming from {self.path.name}: blocks {_ranges(done)} are finished")

    @staticmethod
    def _lock(path: Path) -> int:
        fd = os.open(path / ".lock" if path.is_dir() else path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CheckpointError(f"another pvq run is using {path}; wait for it to end") from None
        return fd

    def _files(self, i: int) -> tuple[Path, Path]:
        return self.path / f"block-{i:05d}.safetensors", self.path / f"block-{i:05d}.json"

    def finished(self) -> list[int]:
        """Indices of the blocks whose tensors and record are both complete."""
        out = []
        for rec in self.path.glob("block-*.json"):
            i = int(rec.stem.split("-")[1])
            if self._files(i)[0].is_file():
                out.append(i)
        return sorted(out)

    def is_finished(self, i: int) -> bool:
        t, r = self._files(i)
        return t.is_file() and r.is_file()

    def tensor_file(self, i: int) -> Path:
        return self._files(i)[0]

    def save_block(self, model: nn.Module, i: int, stats: list[LayerStats]) -> None:
        """Write block ``i``'s tensors and record (the tensors first; both atomically)."""
        from safetensors.torch import save_file

        path, block = _block(model, i)
        prefix = f"{path}.{i}."
        state = {prefix + k: v.detach().contiguous() for k, v in block.state_dict().items()}
        write_atomic(self._files(i)[0], lambda p: save_file(state, str(p), metadata={"format": "pt"}))
        record = {
            "block": i,
            "stats": [asdict(s) for s in stats],
            "modules": {n: m.layer_config() for n, m in quantized_modules(model).items() if n.startswith(prefix)},
            "experts": {n: e for n, e in expert_entries(model).items() if n.startswith(prefix)},
        }
        write_atomic(self._files(i)[1], lambda p: p.write_text(json.dumps(record, indent=1)))

    def load_block(self, model: nn.Module, i: int) -> list[LayerStats]:
        """Put finished block ``i`` into ``model`` (its quantized modules installed, every tensor
        loaded from the work file, meta tensors replaced) and return its layer stats."""
        from safetensors.torch import load_file

        t, r = self._files(i)
        record = json.loads(r.read_text())
        path, block = _block(model, i)
        prefix = f"{path}.{i}."
        if record["modules"] or record["experts"]:
            replace_linears(model, {"modules": record["modules"], "experts": record["experts"]})
        state = {k[len(prefix):]: v for k, v in load_file(str(t)).items()}
        result = block.load_state_dict(state, strict=False, assign=True)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(f"{t} does not match block {i} of the model (missing {result.missing_keys[:4]}, "
                                  f"unexpected {result.unexpected_keys[:4]}); remove {self.path} and start over")
        for m in block.modules():
            if isinstance(m, QuantizedExperts):
                m.clear_cache()
        return [LayerStats(**s) for s in record["stats"]]

    def remove(self) -> None:
        """Delete the work directory (after the checkpoint is in place)."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)

    def close(self) -> None:
        """Release the lock and keep the work (an interrupted or failed run)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _block(model: nn.Module, i: int) -> tuple[str, nn.Module]:
    path, blocks = decoder_blocks(model)
    return path, blocks[i]


def _ranges(xs: list[int]) -> str:
    out, start = [], None
    for k, x in enumerate(xs):
        if start is None:
            start = x
        if k + 1 == len(xs) or xs[k + 1] != x + 1:
            out.append(f"{start}" if start == x else f"{start}-{x}")
            start = None
    return ", ".join(out)
