"""The device argument of the GPU benchmarks: CUDA, or the CPU under Triton's interpreter as a smoke test."""

from __future__ import annotations

import argparse
import os

import torch


def benchmark_device(p: argparse.ArgumentParser, requested: str | None) -> torch.device:
    """``requested`` (default cuda) where it can run: CUDA present, or off CUDA only with ``TRITON_INTERPRET=1``;
    else ``p.error`` with what to change."""
    device = torch.device(requested or "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device here (or --device cpu under TRITON_INTERPRET=1, a smoke test)")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        p.error("off CUDA the kernels run Triton's interpreter: set TRITON_INTERPRET=1")
    return device


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
