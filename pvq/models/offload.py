"""Where the calibration activations (the current block's inputs) live: device, CPU or disk.

The driver keeps one hidden-state tensor ``[B, L, H]`` per calibration batch
between blocks. :class:`InputPlacer` puts them, as each batch is captured,

* on the device (``"device"``): fastest, nothing moves;
* in CPU memory (``"cpu"``, pinned when the device is CUDA): each use copies a
  batch to the device and its output back;
* on disk (``"disk"``): one float file, memory-mapped (``torch.from_file``),
  in the run's work directory (or a temporary one), read and written per batch.

``"auto"`` picks the first that fits: the device when all activations take at
most half of its free memory (the rest is for the block, its Hessians and the
solver), else the CPU when they take at most half of the available memory
(``MemAvailable``), else disk. Moving a float tensor to another device or
through a file and back is exact, so the placement never changes a result.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from pvq.errors import QuantizeError

__all__ = ["PLACEMENTS", "InputPlacer", "OffloadedInputs", "available_cpu_bytes"]

PLACEMENTS = ("auto", "device", "cpu", "disk")


def available_cpu_bytes() -> int:
    """``MemAvailable`` of ``/proc/meminfo`` (psutil's where there is no /proc)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.virtual_memory().available)


def _free_device_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return None


class OffloadedInputs:
    """A captured batch (the fields of :class:`~pvq.models.capture.BlockInputs`) whose hidden state
    is kept off the device: ``hidden`` reads it to the device, assigning writes it back."""

    def __init__(self, store: torch.Tensor, device: torch.device, args: tuple, kwargs: list[dict]):
        self._store = store
        self._device = device
        self.args = args
        self.kwargs = kwargs

    @property
    def hidden(self) -> torch.Tensor:
        return self._store.to(self._device, non_blocking=False)

    @hidden.setter
    def hidden(self, value: torch.Tensor) -> None:
        if tuple(value.shape) != tuple(self._store.shape) or value.dtype != self._store.dtype:
            raise QuantizeError(f"a block returned hidden states {tuple(value.shape)} {value.dtype}, "
                                f"expected {tuple(self._store.shape)} {self._store.dtype}")
        self._store.copy_(value)


class InputPlacer:
    """Called on each captured batch (``place(batch) -> batch``); see the module docstring.

    where: one of :data:`PLACEMENTS`. num_samples: calibration samples in all (sizes the disk file
    and the ``auto`` choice). scratch: directory of the disk file (None: a temporary directory).
    """

    def __init__(self, where: str, device: torch.device, num_samples: int, scratch: str | Path | None = None):
        if where not in PLACEMENTS:
            raise QuantizeError(f"activations must be one of {', '.join(PLACEMENTS)}, got {where!r}")
        self.where = where
        self.device = torch.device(device)
        self.num_samples = int(num_samples)
        self.scratch = scratch
        self.chosen: str | None = None
        self._file: torch.Tensor | None = None
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self._offset = 0
        self.note = ""

    def _choose(self, per_sample: int) -> str:
        need = per_sample * self.num_samples
        if self.where != "auto":
            choice, why = self.where, "as asked"
        else:
            free = _free_device_bytes(self.device)
            if free is None:  # the device is the CPU: its memory or disk
                choice = "device" if need <= available_cpu_bytes() // 2 else "disk"
            elif need <= free // 2:
                choice = "device"
            else:
                choice = "cpu" if need <= available_cpu_bytes() // 2 else "disk"
            why = "auto"
        if choice == "cpu" and self.device.type == "cpu":
            choice = "device"
        self.note = f"calibration activations ({need / 2**30:.2f} GiB) on {choice if choice != 'device' else self.device} ({why})"
        return choice

    def __call__(self, batch):
        h = batch.hidden
        if self.chosen is None:
            self.chosen = self._choose(h[0].numel() * h.element_size())
        if self.chosen == "device":
            return batch
        if self.chosen == "cpu":
            store = h.to("cpu")
            if self.device.type == "cuda":
                store = store.pin_memory()
        else:
            store = self._disk_slice(h)
            store.copy_(h)
        return OffloadedInputs(store, self.device, batch.args, batch.kwargs)

    def _disk_slice(self, h: torch.Tensor) -> torch.Tensor:
        if self._file is None:
            if self.scratch is None:
                self._tmpdir = tempfile.TemporaryDirectory(prefix="pvq-activations-")
                directory = Path(self._tmpdir.name)
            else:
                directory = Path(self.scratch)
            path = directory / f"activations-{os.getpid()}.bin"  # one per process (ranks share the directory)
            total = (h[0].numel()) * self.num_samples
            path.unlink(missing_ok=True)
            self._file = torch.from_file(str(path), shared=True, size=total, dtype=h.dtype)
            self._path = path
        n = h.numel()
        out = self._file[self._offset : self._offset + n].view(h.shape)
        self._offset += n
        return out

    def close(self) -> None:
        """Drop the disk file (if any)."""
        if self._file is not None:
            self._file = None
            self._path.unlink(missing_ok=True)
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
