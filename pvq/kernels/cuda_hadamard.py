"""The randomized Hadamard transform of activation rows as a CUDA kernel (optional).

:func:`hadamard_rotate_cuda` computes ``rh.forward(x)`` (or ``rh.inverse(x)``) of a
:class:`~pvq.transforms.RandomizedHadamard` of a power-of-two size with no dense factor (16 to
16384) for ``x: [..., n]``: a fast Walsh-Hadamard transform with the row in registers, 16 numbers a
thread, in radix-16 passes regrouped through shared memory. The Triton kernel
(:mod:`pvq.kernels.triton_hadamard`) multiplies by H_p as two dense matrices, p^1.5 multiply-adds in
one program: 11.8 us a row of 4096 on an H100, 352 calls in a 7B decode step (docs/kernels.md); it
keeps the sizes with a dense factor (11008 = 344 x 32). Source ``pvq/kernels/csrc/hadamard_rows.cu``, compiled on
first use (:mod:`pvq.kernels.cuda_build`). Reference: ``RandomizedHadamard.forward`` / ``.inverse``.
"""

from __future__ import annotations

import math
import os
import weakref
from functools import lru_cache

import torch

from pvq.transforms import RandomizedHadamard

from .cuda_build import CSRC, cuda_build_available, load_cuda_extension

__all__ = ["CUDA_HADAMARD_SIZES", "hadamard_rotate_cuda", "preferred", "supported"]

CUDA_HADAMARD_SIZES = (16, 16384)
"""Smallest and largest power-of-two row the kernel takes (a block of p / 16 threads)."""


@lru_cache(maxsize=None)
def _extension():
    return load_cuda_extension("pvq_hadamard_rows", os.path.join(CSRC, "hadamard_rows.cu"),
                               "rotations run the Triton kernel or PyTorch instead")


def supported(rh: RandomizedHadamard) -> bool:
    """Whether the kernel transforms rows of this size (sizes only): a power of two, no dense factor."""
    lo, hi = CUDA_HADAMARD_SIZES
    return rh.dense_order == 1 and lo <= rh.pow2_order <= hi


def preferred(rh: RandomizedHadamard, rows: int) -> bool:
    """Whether this machine compiles the kernel and it takes this size (any number of rows: a block a row)."""
    return supported(rh) and cuda_build_available() and _extension() is not None


_SIGNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # transform -> {device: signs}


def _signs(rh: RandomizedHadamard, device) -> torch.Tensor:
    """The transform's signs, float32 ``[n]`` on ``device``, cached per transform while it lives."""
    cache = _SIGNS.setdefault(rh, {})
    key = str(device)
    if key not in cache:
        cache[key] = rh.signs.to(device=device, dtype=torch.float32).contiguous()
    return cache[key]


def hadamard_rotate_cuda(rh: RandomizedHadamard, x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """``rh.forward(x)`` (``inverse``: ``rh.inverse(x)``) for ``x: [..., n]`` on CUDA (fp16, bf16 or
    fp32); same shape and dtype, float32 arithmetic."""
    if x.shape[-1] != rh.n or not supported(rh):
        raise ValueError(f"hadamard_rotate_cuda takes rows of a power of two in {CUDA_HADAMARD_SIZES} with no "
                         f"dense factor; got n = {rh.n} (h = {rh.dense_order}), shape {tuple(x.shape)}")
    if not x.is_cuda:
        raise ValueError(f"hadamard_rotate_cuda takes CUDA tensors, got one on {x.device}")
    ext = _extension()
    if ext is None:
        return rh.inverse(x) if inverse else rh.forward(x)
    rows = x.reshape(-1, rh.n).contiguous()
    out = ext.hadamard_rows(rows, _signs(rh, x.device), rh.n.bit_length() - 1, 1.0 / math.sqrt(rh.n), inverse)
    return out.view(x.shape)
