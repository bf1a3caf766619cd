"""The ``triton`` runtime backend: quantized layers that keep their codes and run Triton kernels.

``y = U^T K(Q', V x) + b``: the input is rotated (``V x``, the layer's
randomized Hadamard), the kernel multiplies by the codes in rotated
coordinates (fused decode for up to 16 rows of input, a whole-layer decode to
the input dtype then one matmul for more), and the output is rotated back.
The layer keeps only its stored tensors (read in place) plus small tables.

It supports PVQ layers whose codes fit the kernels (up to 56-bit codes) and E8
layers, on CUDA devices (chosen there automatically); on CPU only under
``TRITON_INTERPRET=1`` and only when named (``set_backend(model, "triton")``: tests).
"""

from __future__ import annotations

import importlib.util
import os

import torch

from pvq.models.backends import Backend, register_backend

from .runtime import pyramid_runtime, pyramid_supports, table_runtime, table_supports

__all__ = ["FUSED_MAX_ROWS", "TritonBackend", "triton_available"]

FUSED_MAX_ROWS = 16
"""Input rows (tokens) up to which the fused decode-matmul runs; above it, decode then matmul."""


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


class TritonBackend(Backend):
    """Triton kernels over the stored codes (see the module docstring)."""

    name = "triton"
    priority = 10

    def supports(self, layer, device):
        if layer.layout != "stored" or not triton_available():
            return False
        if not (device.type == "cuda" or (device.type == "cpu" and _interpreting())):
            return False
        return pyramid_supports(layer.codec) or table_supports(layer.codec)

    def automatic_on(self, device):
        return device.type == "cuda"  # the CPU interpreter runs only when asked for by name (tests)

    def prepare(self, layer, device, dtype):
        rt = pyramid_runtime(layer, device) if pyramid_supports(layer.codec) else table_runtime(layer, device)
        return {"runtime": rt, "device": torch.empty(0, device=device, dtype=dtype)}

    def is_current(self, runtime, device, dtype):
        probe = runtime.get("device")
        return probe is not None and probe.device == device and probe.dtype == dtype

    def linear(self, layer, runtime, x):
        from . import triton_kernels as K

        rt = runtime["runtime"]
        pvq = pyramid_supports(layer.codec)
        shape = x.shape
        xr = layer.rotate_input(x.reshape(-1, shape[-1]))
        if xr.shape[0] <= FUSED_MAX_ROWS:
            y = (K.pyramid_matmul if pvq else K.table_matmul)(rt, xr)
        else:
            w = (K.pyramid_decode if pvq else K.table_decode)(rt).to(x.dtype)
            y = xr.to(x.dtype) @ w.T
        y = layer.unrotate_output(y.to(x.dtype))
        if layer.bias is not None:
            y = y + layer.bias.to(y.dtype)
        return y.reshape(*shape[:-1], layer.out_features)


register_backend(TritonBackend())
