"""The split enumeration of the pyramid P(D, K): an index order a GPU decodes with table lookups.

:mod:`pvq.codecs.pyramid` numbers the points of P(D, K) coordinate by
coordinate (Fischer's order): unranking one vector walks its D coordinates,
each with a search of the magnitude in the count tables. The *split* order
numbers the same points, with the same count N(D, K) (so the same stored bits
and the same quantization: only the numbering differs), by halves:

    rank_n(y, k) = S_n(k, j) + rank_h(a, j) * N(h, k - j) + rank_h(b, k - j)

for y = (a, b) with halves of h = n / 2 coordinates and j = sum |a| pulses in
the first half, ``S_n(k, j) = sum_{i < j} N(h, i) N(h, k - i)`` (the points
whose first half holds fewer pulses come first). At n = 4 the rank is Fischer's
order of P(4, k). Unranking is one search over j (at most K + 1 entries), one
division and, at the bottom, a lookup in the table of all points of P(4, k),
k <= K (4 coordinates in one int32): no per-coordinate search.

Defined for D = 4 * 2^m (4, 8, 16, 32, ...) with N(D, K) < 2^62 (int64 exact
arithmetic); :func:`split_supported` says whether a (D, K) qualifies. Plain
Python references (``*_reference``) beside the vectorized int64 tensor paths.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .base import CodecError
from .pyramid_counts import (
    _count_table,
    _cumulative_table,
    pyramid_rank_reference,
    pyramid_unrank_reference,
    rank_rows_int64,
    unrank_rows_int64,
)

__all__ = [
    "SPLIT_LEAF",
    "split_offsets",
    "split_rank",
    "split_rank_reference",
    "split_supported",
    "split_unrank",
    "split_unrank_reference",
    "leaf_points",
]

SPLIT_LEAF = 4
"""Dimension of the sub-pyramids at the bottom of the split (their points are tabulated)."""

_LIMIT = 1 << 62


def split_supported(dim: int, pulses: int) -> bool:
    """Whether P(dim, pulses) has a split order here: dim = 4 * 2^m, N(dim, pulses) < 2^62 and the
    cumulative counts A(dim, pulses) = sum_{k <= pulses} N(dim, k) < 2^63 (the int64 tables of the
    vectorized rank; D = 16, K = 53 has N < 2^62 but A of 64 bits)."""
    if dim < SPLIT_LEAF or dim % SPLIT_LEAF or (dim // SPLIT_LEAF) & (dim // SPLIT_LEAF - 1):
        return False
    return _count_table(dim, pulses)[dim][pulses] < _LIMIT and _cumulative_table(dim, pulses)[dim][pulses] < 1 << 63


def _check(dim: int, pulses: int) -> None:
    if not split_supported(dim, pulses):
        raise CodecError(
            f"the split index order needs D = 4 * 2^m (4, 8, 16, 32), N(D, K) < 2^62 and A(D, K) < 2^63; "
            f"got D={dim}, K={pulses} (use index_order='fischer')"
        )


@lru_cache(maxsize=64)
def split_offsets(dim: int, pulses: int) -> tuple[tuple[int, ...], ...]:
    """``S_dim(k, j)`` for k in 0..pulses, j in 0..pulses + 1 (rows padded past j = k + 1 with N(dim, k))."""
    counts = _count_table(dim, pulses)
    h = dim // 2
    rows = []
    for k in range(pulses + 1):
        acc, row = 0, []
        for j in range(pulses + 2):
            row.append(acc)
            if j <= k:
                acc += counts[h][j] * counts[h][k - j]
        rows.append(tuple(row))
    return tuple(rows)


# ---------------------------------------------------------------- references (Python ints)


def split_rank_reference(y: list[int], pulses: int) -> int:
    """Split-order index of one point ``y`` of P(len(y), pulses)."""
    dim = len(y)
    _check(dim, pulses)
    if sum(abs(int(v)) for v in y) != pulses:
        raise CodecError(f"point {y} is not on P({dim}, {pulses})")
    return _rank_ref([int(v) for v in y], pulses)


def _rank_ref(y: list[int], k: int) -> int:
    n = len(y)
    if n == SPLIT_LEAF:
        return pyramid_rank_reference(y, k)
    h = n // 2
    a, b = y[:h], y[h:]
    j = sum(abs(v) for v in a)
    return split_offsets(n, k)[k][j] + _rank_ref(a, j) * _count_table(h, k)[h][k - j] + _rank_ref(b, k - j)


def split_unrank_reference(index: int, dim: int, pulses: int) -> list[int]:
    """The point of P(dim, pulses) with split-order index ``index``."""
    _check(dim, pulses)
    if not 0 <= index < _count_table(dim, pulses)[dim][pulses]:
        raise CodecError(f"index {index} outside [0, N({dim},{pulses}))")
    return _unrank_ref(index, dim, pulses)


def _unrank_ref(r: int, n: int, k: int) -> list[int]:
    if n == SPLIT_LEAF:
        return pyramid_unrank_reference(r, n, k)
    h = n // 2
    offsets = split_offsets(n, k)[k]
    j = max(i for i in range(k + 1) if offsets[i] <= r)
    ra, rb = divmod(r - offsets[j], _count_table(h, k)[h][k - j])
    return _unrank_ref(ra, h, j) + _unrank_ref(rb, h, k - j)


# ---------------------------------------------------------------- vectorized (int64 tensors)


@lru_cache(maxsize=32)
def _tables_cpu(dim: int, pulses: int):
    counts = torch.tensor([list(r) for r in _count_table(dim, pulses)], dtype=torch.int64)
    cum = torch.tensor([list(r) for r in _cumulative_table(dim, pulses)], dtype=torch.int64)
    offsets = {}
    n = dim
    while n > SPLIT_LEAF:
        offsets[n] = torch.tensor([list(r) for r in split_offsets(n, pulses)], dtype=torch.int64)
        n //= 2
    return counts, cum, offsets


def _tables(dim: int, pulses: int, device):
    counts, cum, offsets = _tables_cpu(dim, pulses)
    return counts.to(device), cum.to(device), {n: t.to(device) for n, t in offsets.items()}


def _leaf_rank(y: torch.Tensor, k: torch.Tensor, counts: torch.Tensor, cum: torch.Tensor) -> torch.Tensor:
    """Fischer-order ranks of points ``y: [n, 4]`` with per-row pulse counts ``k: [n]``."""
    return rank_rows_int64(y, k, counts, cum)


def _leaf_unrank(r: torch.Tensor, k: torch.Tensor, counts: torch.Tensor, cum: torch.Tensor) -> torch.Tensor:
    """Points ``[n, 4]`` of Fischer-order ranks ``r`` with per-row pulse counts ``k``."""
    return unrank_rows_int64(r, k, SPLIT_LEAF, counts, cum)


def split_rank(y: torch.Tensor, pulses: int) -> torch.Tensor:
    """Split-order indices ``[n]`` int64 of points ``y: [n, D]`` of P(D, pulses) (vectorized, exact)."""
    if y.dim() != 2:
        raise CodecError(f"points must have shape [n, D], got {tuple(y.shape)}")
    dim = y.shape[1]
    _check(dim, pulses)
    y = y.to(torch.int64)
    if y.shape[0] and not bool((y.abs().sum(1) == pulses).all()):
        raise CodecError(f"every point must satisfy sum|y| = K = {pulses}")
    counts, cum, offsets = _tables(dim, pulses, y.device)
    k = torch.full((y.shape[0],), pulses, dtype=torch.int64, device=y.device)
    return _rank_rows(y, k, counts, cum, offsets)


def _rank_rows(y, k, counts, cum, offsets):
    n = y.shape[1]
    if n == SPLIT_LEAF:
        return _leaf_rank(y, k, counts, cum)
    h = n // 2
    a, b = y[:, :h], y[:, h:]
    j = a.abs().sum(1)
    ra = _rank_rows(a, j, counts, cum, offsets)
    rb = _rank_rows(b, k - j, counts, cum, offsets)
    return offsets[n][k, j] + ra * counts[h, k - j] + rb


def split_unrank(index: torch.Tensor, dim: int, pulses: int) -> torch.Tensor:
    """Points ``[n, D]`` int64 of split-order indices ``index: [n]`` int64 (vectorized, exact)."""
    _check(dim, pulses)
    index = index.to(torch.int64).reshape(-1)
    counts, cum, offsets = _tables(dim, pulses, index.device)
    if index.numel() and bool(((index < 0) | (index >= counts[dim, pulses])).any()):
        raise CodecError(f"an index is outside [0, N({dim},{pulses}))")
    k = torch.full_like(index, pulses)
    return _unrank_rows(index, k, dim, counts, cum, offsets)


def _unrank_rows(r, k, n, counts, cum, offsets):
    if n == SPLIT_LEAF:
        return _leaf_unrank(r, k, counts, cum)
    h = n // 2
    row = offsets[n][k]  # [rows, K + 2]
    j = (row[:, 1:] <= r.unsqueeze(1)).sum(1).clamp(max=k)  # largest j with S(k, j) <= r
    rest = r - row.gather(1, j.unsqueeze(1)).squeeze(1)
    div = counts[h, k - j]
    ra, rb = rest // div, rest % div
    return torch.cat([_unrank_rows(ra, j, h, counts, cum, offsets),
                      _unrank_rows(rb, k - j, h, counts, cum, offsets)], dim=1)


def leaf_points(pulses: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every point of P(4, k) for k = 0..pulses in Fischer order: (points ``[T, 4]`` int64,
    offsets ``[pulses + 2]`` int64 with the points of P(4, k) at rows ``offsets[k] .. offsets[k+1]``)."""
    counts, cum, _ = _tables_cpu(SPLIT_LEAF, pulses)
    sizes = counts[SPLIT_LEAF]
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)])
    k = torch.repeat_interleave(torch.arange(pulses + 1), sizes)
    r = torch.arange(int(offsets[-1])) - offsets[k]
    return _leaf_unrank(r, k, counts, cum), offsets
