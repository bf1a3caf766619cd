"""The ``triton`` runtime backend: quantized layers that keep their codes and run Triton kernels.

``y = U^T K(Q', V x) + b``: the input is rotated (``V x``, the layer's
randomized Hadamard, by the first of :data:`ROTATION_KERNELS` that takes the size: the CUDA
kernel of :mod:`pvq.kernels.cuda_hadamard` where it compiles, the one-launch Triton kernel of
:mod:`pvq.kernels.triton_hadamard`, for a dense factor at prefill's rows two fp16 products
(:mod:`pvq.kernels.matmul_hadamard`)), the kernel multiplies by the codes in rotated
coordinates (fused decode for up to 16 rows of input, a whole-layer decode to
the input dtype then one matmul for more), and the output is rotated back.
The layer keeps only its stored tensors (read in place) plus small tables.

Which kernels run a layer is one table, :data:`KERNEL_FAMILIES`, first match
wins: up to eight input rows of D = 8 split-order layers at up to 3 bits through the CUDA
kernel with its tables in shared memory, where nvcc and ninja compile it
(:mod:`pvq.kernels.cuda_split`); PVQ layers in the split index order (D = 4, 8, 16,
codes up to 62 bits: the Triton fast path), PVQ layers in Fischer's order (codes up to 56 bits, decoded
coordinate by coordinate), E8 layers (table lookups). On CUDA devices (chosen
there automatically); on CPU only under ``TRITON_INTERPRET=1`` and only when
named (``set_backend(model, "triton")``: tests).
"""

from __future__ import annotations

import importlib
import weakref
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, ClassVar

import torch

from pvq.models.backends import Backend, register_backend

from .availability import triton_runs_on
from .cuda_leaf import cuda_leaf_rows_supports, cuda_leaf_supports, cuda_point_rows_supports
from .cuda_split import cuda_split_supports
from .leaf_layout import leaf_runtime
from .leaf_rows import leaf_rows_runtime, point_rows_runtime
from .runtime import pyramid_runtime, pyramid_supports, table_runtime, table_supports
from .split_runtime import split_runtime, split_runtime_supports

__all__ = ["FUSED_MAX_ROWS", "KERNEL_FAMILIES", "ROTATION_KERNELS", "KernelFamily", "RotationKernel", "TritonBackend",
           "TritonRowsBackend", "kernel_family"]


FUSED_MAX_ROWS = 16
"""Input rows (tokens) up to which a family's fused decode-matmul may run (its kernels take B <= 16)."""


@dataclass(frozen=True)
class KernelFamily:
    """The kernels of one runtime layout: which codecs, how to lay a layer out, the two kernels
    (``module.function`` inside :mod:`pvq.kernels`, imported on first use: they need Triton or a
    compiler)."""

    name: str
    supports: Callable  # codec -> bool
    runtime: Callable  # (layer, device) -> runtime layout
    matmul: str  # (runtime, x [B <= 16, in]) -> [B, out] float32 or x's dtype
    decode: str  # (runtime, dtype) -> Q' [out, in] in dtype
    fused_max_rows: int = FUSED_MAX_ROWS  # input rows up to which the fused matmul runs; above, decode then one matmul
    quad_order: bool = False  # runtime(layer, device, quad_swapped=) lays the row-interleaved codes out in quads

    def kernels(self) -> tuple[Callable, Callable]:
        """(fused matmul, whole-layer decode) functions."""
        return _kernel(self.matmul), _kernel(self.decode)


def _kernel(qualified: str) -> Callable:
    module, name = qualified.rsplit(".", 1)
    return getattr(_module(module), name)


@lru_cache(maxsize=None)
def _module(name: str):
    """A kernel module of this package, imported on first use (the function is looked up on every
    call, so a replaced one is seen)."""
    return importlib.import_module(f"{__package__}.{name}")


KERNEL_FAMILIES = (
    # the same kernels with whole points (up to 2 bits: K <= 5): one 16-bit field and one table word a vector, 1.06x
    # the stored bytes at 2 bits where leaf pairs take 1.44x (the cap: 1.3x); docs/kernels.md, session 23
    KernelFamily("pvq-point-rows-cuda", cuda_point_rows_supports, point_rows_runtime, "cuda_leaf.leaf_rows_gemv_cuda",
                 "cuda_leaf.leaf_rows_decode", fused_max_rows=16, quad_order=True),
    # up to 16 rows of fp16/bf16 (launches of up to 8) of D = 8 layers with 16-vector scale groups at 1.5 to 3 bits
    # in the row-interleaved leaf-pair layout: a lane a row, compile-time field shifts (docs/kernels.md, session 8)
    KernelFamily("pvq-leaf-rows-cuda", cuda_leaf_rows_supports, leaf_rows_runtime, "cuda_leaf.leaf_rows_gemv_cuda",
                 "cuda_leaf.leaf_rows_decode", fused_max_rows=16, quad_order=True),
    # up to 16 rows (launches of up to 8) of D = 8 layers at <= 3.3 bits in the leaf-pair layout (transcoded at
    # load: no division, no search; CUDA, compiled on first use): docs/kernels.md, session 8
    KernelFamily("pvq-leaf-cuda", cuda_leaf_supports, leaf_runtime, "cuda_leaf.leaf_gemv_cuda", "cuda_leaf.leaf_decode",
                 fused_max_rows=16),
    # up to 8 rows of D = 8 layers at <= 3 bits with the decode tables in shared memory (CUDA, compiled on first
    # use; several rows of fp16/bf16 are decoded once for all)
    KernelFamily("pvq-split-cuda", cuda_split_supports, split_runtime, "cuda_split.split_gemv_cuda",
                 "triton_split.split_decode", fused_max_rows=8),
    # fused only for one row: at 4 and 16 rows decode + cuBLAS is faster on an H100 (docs/kernels.md)
    KernelFamily("pvq-split", split_runtime_supports, split_runtime, "triton_split.split_matmul",
                 "triton_split.split_decode", fused_max_rows=1),
    KernelFamily("pvq-fischer", pyramid_supports, pyramid_runtime, "triton_kernels.pyramid_matmul",
                 "triton_kernels.pyramid_decode"),
    KernelFamily("e8-table", table_supports, table_runtime, "triton_kernels.table_matmul", "triton_kernels.table_decode"),
)


def kernel_family(codec) -> KernelFamily | None:
    """The first kernel family that decodes this codec, or None."""
    return next((f for f in KERNEL_FAMILIES if f.supports(codec)), None)


class TritonBackend(Backend):
    """Triton kernels over the stored codes (see the module docstring)."""

    name = "triton"
    priority = 10
    quads: ClassVar[bool] = False
    """Lay the row-interleaved families' codes out in the quad order (:class:`TritonRowsBackend`)."""

    def supports(self, layer, device):
        return layer.layout == "stored" and triton_runs_on(device) and kernel_family(layer.codec) is not None

    def automatic_on(self, device):
        return device.type == "cuda"  # the CPU interpreter runs only when asked for by name (tests)

    def prepare(self, layer, device, dtype):
        family = kernel_family(layer.codec)
        runtime = family.runtime(layer, device, quad_swapped=True) if self.quads and family.quad_order else \
            family.runtime(layer, device)
        return {"runtime": runtime, "family": family, "codec": _reference(layer.codec),
                "device": torch.empty(0, device=device, dtype=dtype), "rotation_kernels": {}}

    def still_runs(self, layer, runtime, device):
        """Without asking every kernel family again (on every forward of a 7B prefill's 128 to 224 products)
        where the runtime was laid out for this very codec from stored codes (the device is :meth:`is_current`'s)."""
        codec = runtime.get("codec")
        if codec is not None and codec() is layer.codec and layer.layout == "stored":
            return True
        return self.supports(layer, device)

    def is_current(self, runtime, device, dtype):
        probe = runtime.get("device")
        return probe is not None and probe.device == device and probe.dtype == dtype

    def linear(self, layer, runtime, x):
        shape = x.shape
        if layer.rotation is None and x.numel() > runtime["family"].fused_max_rows * shape[-1]:
            # prefill of a layer without online rotations: x as it comes (``matmul`` folds its leading dims into
            # one cuBLAS product); the host's few microseconds a product count there (docs/kernels.md, session 27)
            return self._rotated_linear(layer, runtime, x, x.dtype)
        xr = _rotate(layer, x.reshape(-1, shape[-1]), inverse=False, chosen=runtime.get("rotation_kernels"))
        return self._rotated_linear(layer, runtime, xr, x.dtype).reshape(*shape[:-1], layer.out_features)

    def gated_linear(self, layer, runtime, gate, up, activation):
        """Where the layer rotates its input by power-of-two chunks (and not its output): the gated product and
        that rotation in one kernel (:func:`pvq.kernels.triton_hadamard.gated_hadamard_rotate`), then the product;
        otherwise the base class's ``linear(act(gate) * up)``."""
        rh = _gated_rotation(layer)
        if rh is None or activation not in _kernel("triton_hadamard.GATED_ACTIVATIONS") or gate.shape != up.shape:
            return super().gated_linear(layer, runtime, gate, up, activation)
        shape = gate.shape
        xr = _kernel("triton_hadamard.gated_hadamard_rotate")(rh, gate.reshape(-1, shape[-1]),
                                                               up.reshape(-1, shape[-1]), activation)
        return self._rotated_linear(layer, runtime, xr, gate.dtype).reshape(*shape[:-1], layer.out_features)

    def _rotated_linear(self, layer, runtime, xr, dtype):
        """``U^T K(Q', xr) + b`` for rotated rows ``xr [rows, in]``, in ``dtype`` (``xr [..., in]`` above the fused
        rows where the layer rotates nothing)."""
        rt, family = runtime["runtime"], runtime["family"]
        if xr.dim() == 2 and xr.shape[0] <= family.fused_max_rows:
            y = _kernel(family.matmul)(rt, xr)
        else:  # decoded straight to the input's dtype
            y = (xr if xr.dtype == dtype else xr.to(dtype)) @ _kernel(family.decode)(rt, dtype).T
        y = _rotate(layer, y if y.dtype == dtype else y.to(dtype), inverse=True, chosen=runtime.get("rotation_kernels"))
        if layer.bias is not None:
            y = y + layer.bias.to(y.dtype)
        return y


@dataclass(frozen=True)
class RotationKernel:
    """A kernel for a layer's randomized Hadamard of activation rows (``module.function`` inside
    :mod:`pvq.kernels`, imported on first use)."""

    preferred: str  # (RandomizedHadamard, rows) -> whether it is the faster way for that many rows
    rotate: str  # (RandomizedHadamard, x, inverse=) -> the transformed rows
    runs_on: str  # (torch.device) -> whether it runs on tensors of that device


ROTATION_KERNELS = (
    RotationKernel("cuda_hadamard.preferred", "cuda_hadamard.hadamard_rotate_cuda", "availability.cuda_runs_on"),
    RotationKernel("triton_hadamard.preferred", "triton_hadamard.hadamard_rotate", "availability.triton_runs_on"),
    # a dense factor above 64 rows (prefill): two fp16 products on tensor cores, 3.9x the PyTorch float32 path at
    # 512 and 2048 rows of 11008 on an H100 (docs/kernels.md, session 26)
    RotationKernel("matmul_hadamard.preferred", "matmul_hadamard.hadamard_rotate_matmul", "availability.cuda_runs_on"),
)
"""In order of preference; the layer's PyTorch transform where none is preferred."""


def _reference(codec):
    """A weak reference to ``codec`` (the runtime must not hold its tensors: they would count as runtime tensors),
    or None where the codec takes none."""
    try:
        return weakref.ref(codec)
    except TypeError:
        return None


def _gated_rotation(layer):
    """The chunk transform of a layer's input rotation where the gated kernel takes it (input side only, pure
    power-of-two chunks), else None."""
    rot = layer.rotation
    if rot is None or rot.v is None or rot.u is not None:
        return None
    rh = rot.v.chunk
    return rh if _kernel("triton_hadamard.gated_supported")(rh) else None


_UNCHOSEN = object()
_CHOICES_KEPT = 256  # row counts whose choice a runtime keeps (prompt lengths vary; each choice is a few bytes)


def _rotation_kernel(rh, device: torch.device, rows: int) -> RotationKernel | None:
    """The first of :data:`ROTATION_KERNELS` that runs on ``device`` and is the faster way for ``rows`` rows of
    ``rh``'s size, else None (the layer's PyTorch transform)."""
    return next((k for k in ROTATION_KERNELS if _kernel(k.runs_on)(device) and _kernel(k.preferred)(rh, rows)), None)


def _rotate(layer, x: torch.Tensor, inverse: bool, chosen: dict | None = None) -> torch.Tensor:
    """``V x`` (or ``U^T y``) through the first rotation kernel that is the faster way for this size
    and number of rows, else the layer's PyTorch transform. ``chosen``: the runtime's choices by (side, rows, size),
    asked once each (six lookups and calls a rotation otherwise: the layer plan's prefill makes 14 a block)."""
    if layer.rotation is None:
        return x
    transform = layer.rotation.u if inverse else layer.rotation.v
    if transform is None:  # a one-sided rotation (the fused plan keeps only the input side)
        return x
    rh = transform.chunk  # a block-diagonal transform: its chunks are rows of their own
    rows = x.numel() // rh.n
    key = (inverse, rows, rh.n)  # a RandomizedHadamard's structure is its size's (the constructor takes n, seed)
    kernel = _UNCHOSEN if chosen is None else chosen.get(key, _UNCHOSEN)
    if kernel is _UNCHOSEN:
        kernel = _rotation_kernel(rh, x.device, rows)
        if chosen is not None:
            if len(chosen) >= _CHOICES_KEPT:
                chosen.clear()
            chosen[key] = kernel
    if kernel is not None:
        return _kernel(kernel.rotate)(rh, x.reshape(rows, rh.n), inverse=inverse).reshape(x.shape)
    return layer.unrotate_output(x) if inverse else layer.rotate_input(x)


class TritonRowsBackend(TritonBackend):
    """The ``triton`` backend for 2 to 16 rows a call (batched or speculative decoding): the row-interleaved families'
    codes in the quad order (:mod:`pvq.kernels.leaf_rows`), whose tensor-core kernel needs no shared-memory stage:
    on an H100, 2 to 16 rows 1.07x to 1.51x faster than the plain order's, one row 3% to 12% slower
    (docs/kernels.md, session 29). Named only (``--backend triton-rows``); other layers as ``triton`` runs them."""

    name = "triton-rows"
    priority = 9
    quads = True

    def automatic_on(self, device):
        return False


register_backend(TritonBackend())
register_backend(TritonRowsBackend())
