"""The randomized Hadamard of many activation rows as two matrix products in the rows' own dtype.

For ``n = h p`` with a dense factor (11008 = 344 x 32) and more rows than the CUDA and Triton kernels take
(:data:`MIN_ROWS`), :func:`hadamard_rotate_matmul` computes ``rh.forward(x)`` (or ``rh.inverse(x)``) of a
:class:`~pvq.transforms.RandomizedHadamard` for ``x: [rows, n]`` as

    forward:  Y_r = F (S_r H_p / sqrt(p)),        S_r = (s * x_r) viewed as [h, p]
    inverse:  x_r = s * (F^T (Y_r H_p / sqrt(p)))

two products in ``x``'s dtype (cuBLAS on tensor cores for fp16 / bf16, float32 accumulation), where the PyTorch
transform computes in float32 (CUDA-core GEMMs of radix 64 and the dense factor, and their transposes: about 12 ms
of a 2-bit 7B model's 49 ms of GPU time at 512 prefill tokens on an H100, docs/kernels.md, session 26). An fp16 /
bf16 result is rounded twice instead of once (after each product): the difference from the float32 path is of the
order of the dtype's rounding (``tests/kernels/test_matmul_hadamard.py``). Float32 rows are computed in float32.

Reference: ``RandomizedHadamard.forward`` / ``.inverse``.
"""

from __future__ import annotations

import math
import weakref

import torch

from pvq.transforms import RandomizedHadamard
from pvq.transforms.hadamard import hadamard_matrix

__all__ = ["MIN_ROWS", "hadamard_rotate_matmul", "preferred"]

MIN_ROWS = 65
"""Fewest rows this is preferred for: up to 64 rows the CUDA and Triton kernels take a dense factor
(:data:`pvq.kernels.cuda_hadamard.DENSE_MAX_ROWS`, :data:`pvq.kernels.triton_hadamard.TILED_MAX_ROWS`)."""


def preferred(rh: RandomizedHadamard, rows: int) -> bool:
    """Whether the two products are the way for this size and number of rows: a dense factor, prefill's rows."""
    return rh.dense_order > 1 and rows >= MIN_ROWS


_FACTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # transform -> {(device, dtype): tensors}


def _factors(rh: RandomizedHadamard, device, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(``F [h, h]``, ``H_p / sqrt(p) [p, p]``, signs ``[n]``) in ``dtype`` on ``device``, cached per transform."""
    cache = _FACTORS.setdefault(rh, {})
    key = (str(device), dtype)
    if key not in cache:
        hp = hadamard_matrix(rh.pow2_order, dtype=torch.float64) / math.sqrt(rh.pow2_order)
        cache[key] = tuple(t.to(device=device, dtype=dtype).contiguous() for t in (rh.dense, hp, rh.signs))
    return cache[key]


def hadamard_rotate_matmul(rh: RandomizedHadamard, x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """``rh.forward(x)`` (``inverse``: ``rh.inverse(x)``) for float ``x [rows, n]``, computed in ``x``'s dtype."""
    if x.dim() != 2 or x.shape[1] != rh.n or not x.is_floating_point():
        raise ValueError(f"x must be float [rows, {rh.n}], got {x.dtype} {tuple(x.shape)}")
    rows, h, p = x.shape[0], rh.dense_order, rh.pow2_order
    f, hp, signs = _factors(rh, x.device, x.dtype)
    v = x if inverse else x * signs
    if p > 1:
        v = v.reshape(rows * h, p) @ hp  # the inner (power-of-two) axis; H_p is symmetric
    v = v.reshape(rows, h, p)
    v = torch.matmul(f.T if inverse else f, v)  # the outer axis: [h, h] times each row's [h, p]
    v = v.reshape(rows, rh.n)
    return v * signs if inverse else v
