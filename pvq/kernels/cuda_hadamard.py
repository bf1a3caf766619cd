"""The randomized Hadamard transform of activation rows as CUDA kernels (optional).

:func:`hadamard_rotate_cuda` computes ``rh.forward(x)`` (or ``rh.inverse(x)``) of a
:class:`~pvq.transforms.RandomizedHadamard` for ``x: [..., n]``:

* a power-of-two size with no dense factor (16 to 16384): a fast Walsh-Hadamard transform with the
  row in registers, 16 numbers a thread, in radix-16 passes regrouped through shared memory (the
  Triton kernel, :mod:`pvq.kernels.triton_hadamard`, multiplies by H_p as two dense matrices, p^1.5
  multiply-adds in one program: 11.8 us a row of 4096 on an H100);
* ``n = h p`` with a dense factor (11008 = 344 x 32, 14336 = 7 x 2048), up to
  :data:`DENSE_MAX_ROWS` rows: blocks of a few outer rows of one row's output, the dense factor's
  multiply-adds spread over many SMs, then the butterflies in shared memory (the Triton tiled kernel
  runs one program a row: 11.6 us a row of 11008 on an H200, session 9). Above that many rows the
  PyTorch path's matmuls are the faster way.

Source ``pvq/kernels/csrc/hadamard_rows.cu``, compiled on first use (:mod:`pvq.kernels.cuda_build`).
Reference: ``RandomizedHadamard.forward`` / ``.inverse``.
"""

from __future__ import annotations

import math
import os
import weakref
from functools import lru_cache

import torch

from pvq.transforms import RandomizedHadamard

from .cuda_build import CSRC, cuda_build_available, load_cuda_extension

__all__ = ["CUDA_HADAMARD_SIZES", "DENSE_MAX_ORDER", "DENSE_MAX_ROWS", "DENSE_PREFERRED_MAX_ORDER", "hadamard_rotate_cuda", "preferred",
           "supported"]

CUDA_HADAMARD_SIZES = (16, 16384)
"""Smallest and largest power-of-two row the kernel takes (a block of p / 16 threads)."""

DENSE_MAX_ORDER = 4096
"""Largest dense factor the dense kernel takes (h multiply-adds an output)."""

DENSE_MAX_ROWS = 64
"""Most rows the dense kernel is preferred for (h multiply-adds an output on CUDA cores; the PyTorch
path's matmuls take more rows)."""

DENSE_PREFERRED_MAX_ORDER = 64
"""Largest dense factor the dense kernel is preferred for. Measured on an H200 (session 12,
docs/bench/hadamard_s12_h200.txt): 14336 = 28 x 512 in 7.7 us a row against the Triton kernel's 33.6
and PyTorch's 28.2; but 11008 = 344 x 32 in 10.4 us against 11.3 at one row, 20.8 against 11.4 at
four, and 16.4 us a call inside a 7B decode step against the Triton kernel's 11.6 (each of its 344
blocks reads the whole row and its signs: 66 KB from L2), so the Triton kernel keeps large factors."""


@lru_cache(maxsize=None)
def _extension():
    return load_cuda_extension("pvq_hadamard_rows", os.path.join(CSRC, "hadamard_rows.cu"),
                               "rotations run the Triton kernel or PyTorch instead")


def supported(rh: RandomizedHadamard) -> bool:
    """Whether a kernel transforms rows of this size (sizes only): a power of two from 16 to 16384 with no
    dense factor, or a dense factor of order up to :data:`DENSE_MAX_ORDER` times a power of two up to 16384."""
    lo, hi = CUDA_HADAMARD_SIZES
    if rh.dense_order == 1:
        return lo <= rh.pow2_order <= hi
    return rh.dense_order <= DENSE_MAX_ORDER and rh.pow2_order <= hi


def preferred(rh: RandomizedHadamard, rows: int) -> bool:
    """Whether this machine compiles the kernels and one is the faster way for this size and number of rows
    (no dense factor: any number, a block a row; a dense factor of order up to
    :data:`DENSE_PREFERRED_MAX_ORDER`: up to :data:`DENSE_MAX_ROWS` rows)."""
    if rh.dense_order > 1 and (rows > DENSE_MAX_ROWS or rh.dense_order > DENSE_PREFERRED_MAX_ORDER):
        return False
    return supported(rh) and cuda_build_available() and _extension() is not None


_SIGNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # transform -> {device: signs}


def _signs(rh: RandomizedHadamard, device) -> torch.Tensor:
    """The transform's signs, float32 ``[n]`` on ``device``, cached per transform while it lives."""
    cache = _SIGNS.setdefault(rh, {})
    key = str(device)
    if key not in cache:
        cache[key] = rh.signs.to(device=device, dtype=torch.float32).contiguous()
    return cache[key]


_FACTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # transform -> {(device, inverse): factor}


def _factor(rh: RandomizedHadamard, device, inverse: bool) -> torch.Tensor:
    """The dense factor F (``inverse``: F^T), float32 ``[h, h]`` contiguous on ``device``, cached per transform."""
    cache = _FACTORS.setdefault(rh, {})
    key = (str(device), inverse)
    if key not in cache:
        f = rh.dense.T if inverse else rh.dense
        cache[key] = f.to(device=device, dtype=torch.float32).contiguous()
    return cache[key]


def hadamard_rotate_cuda(rh: RandomizedHadamard, x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """``rh.forward(x)`` (``inverse``: ``rh.inverse(x)``) for ``x: [..., n]`` on CUDA (fp16, bf16 or
    fp32); same shape and dtype, float32 arithmetic."""
    if x.shape[-1] != rh.n or not supported(rh):
        raise ValueError(f"hadamard_rotate_cuda takes rows of a power of two in {CUDA_HADAMARD_SIZES}, or of a dense "
                         f"factor of order <= {DENSE_MAX_ORDER} times a power of two <= {CUDA_HADAMARD_SIZES[1]}; "
                         f"got n = {rh.n} (h = {rh.dense_order}), shape {tuple(x.shape)}")
    if not x.is_cuda:
        raise ValueError(f"hadamard_rotate_cuda takes CUDA tensors, got one on {x.device}")
    ext = _extension()
    if ext is None:
        return rh.inverse(x) if inverse else rh.forward(x)
    rows = x.reshape(-1, rh.n).contiguous()
    log2p = rh.pow2_order.bit_length() - 1
    if rh.dense_order == 1:
        out = ext.hadamard_rows(rows, _signs(rh, x.device), log2p, 1.0 / math.sqrt(rh.n), inverse)
    else:
        out = ext.hadamard_dense_rows(rows, _signs(rh, x.device), _factor(rh, x.device, inverse), log2p,
                                      1.0 / math.sqrt(rh.pow2_order), inverse)
    return out.view(x.shape)
