"""The randomized Hadamard transform of activation rows as a CUDA kernel (optional).

:func:`hadamard_rotate_cuda` computes ``rh.forward(x)`` (or ``rh.inverse(x)``) of a
:class:`~pvq.transforms.RandomizedHadamard` for ``x: [..., n]``: a fast Walsh-Hadamard transform of
the power-of-two axis in shared memory (log2 p butterfly steps), then the dense factor's product
spread over blocks. The Triton kernel (:mod:`pvq.kernels.triton_hadamard`) multiplies by H_p as two
dense matrices, p^1.5 multiply-adds in one program: 11.8 us a row of 4096 on an H100, 352 calls
in a 7B decode step (docs/kernels.md). Source ``pvq/kernels/csrc/hadamard_rows.cu``, compiled on
first use (:mod:`pvq.kernels.cuda_build`). Reference: ``RandomizedHadamard.forward`` / ``.inverse``.
"""

from __future__ import annotations

import math
import weakref
from functools import lru_cache

import torch

from pvq.transforms import RandomizedHadamard

from .cuda_build import cuda_build_available, load_cuda_extension

__all__ = ["CUDA_HADAMARD_SIZES", "DENSE_MAX_ROWS", "DENSE_POW2", "hadamard_rotate_cuda", "preferred", "supported"]

CUDA_HADAMARD_SIZES = (16, 16384)
"""Smallest and largest row the kernels take (powers of two: a block of p / 16 threads)."""
DENSE_POW2 = (16, 32, 64)
"""Power-of-two orders p the dense-factor kernel takes (one thread runs H_p on a segment in registers)."""
DENSE_MAX_ROWS = 64
"""Rows above which a dense factor is left to the other paths (each block recomputes X H_p of its row
and its share of the h^2 p multiply-adds with CUDA cores)."""


@lru_cache(maxsize=None)
def _extension():
    return load_cuda_extension("pvq_hadamard_rows", "hadamard_rows.cu",
                               "rotations run the Triton kernel or PyTorch instead")


def supported(rh: RandomizedHadamard) -> bool:
    """Whether a kernel transforms rows of this size (sizes only): a power of two from 16 to 16384, or
    a dense factor times p in :data:`DENSE_POW2` with n <= 16384 (e.g. 11008 = 344 x 32)."""
    lo, hi = CUDA_HADAMARD_SIZES
    if rh.dense_order == 1:
        return lo <= rh.pow2_order <= hi
    return rh.pow2_order in DENSE_POW2 and rh.n <= hi


def preferred(rh: RandomizedHadamard, rows: int) -> bool:
    """Whether this machine compiles the kernels and they are the faster way for ``rows`` rows."""
    return supported(rh) and (rh.dense_order == 1 or rows <= DENSE_MAX_ROWS) and cuda_build_available() \
        and _extension() is not None


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # transform -> {(device, inverse): tensors}


def _tables(rh: RandomizedHadamard, device, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(signs float32 ``[n]``, ``F`` or ``F^T`` float32 ``[h, h]`` (a placeholder when h = 1)) on
    ``device``, cached per transform while it lives."""
    cache = _TABLES.setdefault(rh, {})
    key = (str(device), inverse)
    if key not in cache:
        dense = (rh.dense.T if inverse else rh.dense) if rh.dense_order > 1 else torch.zeros(1)
        cache[key] = (rh.signs.to(device=device, dtype=torch.float32).contiguous(),
                      dense.to(device=device, dtype=torch.float32).contiguous())
    return cache[key]


def hadamard_rotate_cuda(rh: RandomizedHadamard, x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """``rh.forward(x)`` (``inverse``: ``rh.inverse(x)``) for ``x: [..., n]`` on CUDA (fp16, bf16 or
    fp32); same shape and dtype, float32 arithmetic."""
    if x.shape[-1] != rh.n or not supported(rh):
        raise ValueError(f"hadamard_rotate_cuda takes rows of a power of two in {CUDA_HADAMARD_SIZES}, or of a "
                         f"dense factor times p in {DENSE_POW2}; got n = {rh.n} (h = {rh.dense_order}), "
                         f"shape {tuple(x.shape)}")
    if not x.is_cuda:
        raise ValueError(f"hadamard_rotate_cuda takes CUDA tensors, got one on {x.device}")
    ext = _extension()
    if ext is None:
        return rh.inverse(x) if inverse else rh.forward(x)
    rows = x.reshape(-1, rh.n).contiguous()
    signs, dense = _tables(rh, x.device, inverse)
    out = ext.hadamard_rows(rows, signs, dense, rh.dense_order, rh.pow2_order.bit_length() - 1,
                            1.0 / math.sqrt(rh.pow2_order), inverse)
    return out.view(x.shape)
