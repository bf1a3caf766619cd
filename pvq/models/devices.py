"""Device names given by users, checked before any work."""

from __future__ import annotations

import torch

from pvq.errors import QuantizeError

__all__ = ["resolve_device"]


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``device`` as a ``torch.device`` (None: CUDA if available, else CPU).

    Raises :class:`QuantizeError` for a name torch does not know, or a device
    this machine does not have (``cuda`` without CUDA, ``cuda:3`` with two GPUs).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise QuantizeError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise QuantizeError(f"device {device!r} asked for, but this machine has no CUDA GPU (or torch "
                                "was built without CUDA); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise QuantizeError(f"device {device!r} does not exist: this machine has "
                                f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type not in ("cpu", "meta", "mps", "xpu"):
        raise QuantizeError(f"device type {dev.type!r} is not supported; use cpu or cuda")
    elif dev.type in ("mps", "xpu") and not getattr(torch, dev.type).is_available():
        raise QuantizeError(f"device {device!r} is not available on this machine; use cpu")
    return dev
