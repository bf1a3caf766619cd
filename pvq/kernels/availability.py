"""Where the Triton kernels run: on CUDA, and on the CPU under ``TRITON_INTERPRET=1`` (the tests)."""

from __future__ import annotations

import importlib.util
import os

import torch

__all__ = ["cuda_runs_on", "triton_available", "triton_runs_on"]


def triton_available() -> bool:
    """Whether Triton is installed (it is an optional dependency: ``pip install pvq[gpu]``)."""
    return importlib.util.find_spec("triton") is not None


def triton_runs_on(device: torch.device) -> bool:
    """Whether a Triton kernel can run on ``device``: CUDA, or the CPU through the interpreter."""
    if not triton_available():
        return False
    return device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "") == "1")


def cuda_runs_on(device: torch.device) -> bool:
    """Whether a CUDA kernel can run on ``device`` (a CUDA device; whether it compiled is the kernel's own check)."""
    return device.type == "cuda"
