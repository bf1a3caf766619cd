"""Tables of the CUDA split kernel for D = 8 (:mod:`pvq.kernels.cuda_split`), and which layers they take.
(They were first written for a lean one-row Triton kernel, measured no faster than the general one on
an H100 and removed: history keeps it.)

The general split kernels (:mod:`pvq.kernels.triton_split`) read about ten
small tables per vector (offsets, counts, float64 reciprocals, leaf offsets,
leaves, inverse norms, gain levels, scales). For D = 8 with N(8, K) < 2^22
(1.5 to 3 bits) the same decode needs only these (the CUDA kernel reads them
from shared memory: docs/kernels.md):

* ``pair_table`` int64 ``[K + 1, 2]``: for the pulses j of the first half,
  (offset ``S_8(K, j)`` | divisor ``N(4, K - j)`` << 32, float32
  ``1 / N(4, K - j)`` as its bits | ``leaf_offset[j] | leaf_offset[K - j] << 16``
  << 32): two 8-byte loads per vector instead of five gathers; the division
  runs in float32 (exact for dividends below 2^22 with one correction either
  way).
* ``buckets`` int64 ``[N(8, K) >> s + 1]``: the pulses j of the first half
  come from a compare chain of K steps in the general kernel (about 40
  instructions per vector); here the index's top bits pick a bucket of
  2^s indices, s the largest with 2^s <= the smallest run ``N(4, j) N(4, K - j)``,
  so a bucket holds at most one boundary: entry ``j0 | S_8(K, j0 + 1) << 32``
  for the bucket's first index, and ``j = j0 + (r >= S_8(K, j0 + 1))``.
* ``leaf_norms`` int64 ``[T]``: each point of P(4, k) (4 x int8) | its squared
  norm << 32, one 8-byte load per half instead of a load and four
  multiply-adds.

(int64 entries rather than int32 ``[.., 4]`` rows: Triton routes 3-D tensors
through shared memory to reshape them.)

All are a few KB (the leaves: 96 KB at 3 bits), built once per (K, device). The decode is bit-identical to
:func:`~pvq.kernels.split_runtime.split_decode_reference`.
"""

from __future__ import annotations

import struct
from functools import lru_cache

import torch

from pvq.codecs.pyramid_counts import pyramid_count
from pvq.codecs.pyramid_split import leaf_points, split_offsets

from .split_runtime import SplitRuntime, shared_leaves

__all__ = ["LEAN_MAX_COUNT", "bucket_shift", "lean_codec_supported", "lean_supported", "lean_tables"]

LEAN_MAX_COUNT = 1 << 22
"""Largest N(8, K) whose split these tables take (the bucket and pair fields fit 32 bits)."""


def lean_supported(rt: SplitRuntime) -> bool:
    """Whether these tables (and the CUDA kernel) decode this layer (host-side sizes only: no device sync; cached,
    since it is asked on every call)."""
    return _lean_supported(rt.dim, rt.pulses, rt.code_bits)


def lean_codec_supported(codec) -> bool:
    """:func:`lean_supported` from a split-order PVQ codec's sizes."""
    return _lean_supported(codec.dim, codec.pulses, codec.code_bits)


@lru_cache(maxsize=None)
def _lean_supported(dim: int, pulses: int, code_bits: int) -> bool:
    if dim != 8 or pyramid_count(8, pulses) >= LEAN_MAX_COUNT or code_bits > 32:
        return False
    return sum(pyramid_count(4, k) for k in range(pulses + 1)) < 1 << 16  # leaf offsets fit 16 bits


def _f32_bits(v: float) -> int:
    return struct.unpack("<i", struct.pack("<f", v))[0]


@lru_cache(maxsize=None)
def bucket_shift(pulses: int) -> int:
    """s: the largest with 2^s at most the smallest run of indices with one j (``N(4, j) N(4, K - j)``)."""
    return min(pyramid_count(4, j) * pyramid_count(4, pulses - j) for j in range(pulses + 1)).bit_length() - 1


@lru_cache(maxsize=None)
def lean_tables(pulses: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(``buckets`` int64 ``[N(8, K) >> s + 1]``, ``pair_table`` int64 ``[K + 1, 2]``, ``leaf_norms`` int64
    ``[T]``) for D = 8 on a device (fields as in the module docstring)."""
    k = pulses
    offsets = split_offsets(8, k)[k]  # S_8(K, j) for j = 0 .. K + 1 (the last is N(8, K))
    pts, leaf_off = leaf_points(k)
    rows = []
    for j in range(k + 1):
        div = pyramid_count(4, k - j)
        rows.append([offsets[j], div, _f32_bits(1.0 / div), int(leaf_off[j]) | (int(leaf_off[k - j]) << 16)])
    fields = torch.tensor(rows, dtype=torch.int64) & 0xFFFFFFFF  # as unsigned 32-bit fields
    pair = torch.stack([fields[:, 0] | (fields[:, 1] << 32), fields[:, 2] | (fields[:, 3] << 32)], 1)
    packed, _ = shared_leaves(k, "cpu")
    leafn = (packed.to(torch.int64) & 0xFFFFFFFF) | ((pts * pts).sum(1) << 32)
    shift = bucket_shift(k)
    start = torch.arange((pyramid_count(8, k) >> shift) + 1, dtype=torch.int64) << shift
    bounds = torch.tensor(offsets[: k + 2], dtype=torch.int64)
    j0 = torch.searchsorted(bounds[1 : k + 1], start, right=True)  # pulses of the bucket's first index
    buckets = j0 | (bounds[j0 + 1] << 32)
    return buckets.to(device), pair.contiguous().to(device), leafn.to(device)
