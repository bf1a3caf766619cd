"""Counts of the pyramid P(D, K), the plain rank/unrank references of Fischer's order, and its
int64 tensor rank/unrank with a pulse count per row.

Shared by the codec (:mod:`pvq.codecs.pyramid`) and the split order
(:mod:`pvq.codecs.pyramid_split`); see the former for the enumeration order.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from .base import CodecError

# ---------------------------------------------------------------- counts


def _check_dk(dim: int, pulses: int) -> None:
    if not isinstance(dim, int) or dim < 1:
        raise CodecError(f"pyramid dimension D must be an integer >= 1, got {dim!r}")
    if not isinstance(pulses, int) or pulses < 0:
        raise CodecError(f"pyramid pulse count K must be an integer >= 0, got {pulses!r}")


@lru_cache(maxsize=64)
def _count_table(dim: int, pulses: int) -> tuple[tuple[int, ...], ...]:
    """N(n, k) for n in 0..dim, k in 0..pulses as exact Python ints."""
    table = [[0] * (pulses + 1) for _ in range(dim + 1)]
    table[0][0] = 1
    for n in range(1, dim + 1):
        table[n][0] = 1
        for k in range(1, pulses + 1):
            table[n][k] = table[n - 1][k] + table[n - 1][k - 1] + table[n][k - 1]
    return tuple(tuple(row) for row in table)


def pyramid_count(dim: int, pulses: int) -> int:
    """N(D, K): the number of integer points y in Z^D with sum |y_i| = K (exact)."""
    _check_dk(dim, pulses)
    return _count_table(dim, pulses)[dim][pulses]


def pyramid_bits(dim: int, pulses: int) -> float:
    """log2 N(D, K): the information content of one shape index, in bits."""
    count = pyramid_count(dim, pulses)
    return math.log2(count) if count < 2**1000 else count.bit_length() - 1 + math.log2(
        count / 2 ** (count.bit_length() - 1)
    )


def max_pulses_for_bits(dim: int, bits: float) -> int:
    """Largest K with log2 N(D, K) <= bits (e.g. bits = D * bits_per_weight)."""
    _check_dk(dim, 0)
    if bits < 0:
        raise CodecError(f"bit budget must be >= 0, got {bits}")
    return _largest_pulses(dim, lambda count: math.log2(count) <= bits)


@lru_cache(maxsize=64)
def _cumulative_table(dim: int, pulses: int) -> tuple[tuple[int, ...], ...]:
    """A(n, k) = sum_{i<=k} N(n, i) for n in 0..dim, k in 0..pulses."""
    counts = _count_table(dim, pulses)
    out = []
    for row in counts:
        acc, cum = 0, []
        for v in row:
            acc += v
            cum.append(acc)
        out.append(tuple(cum))
    return tuple(out)


# ---------------------------------------------------------------- rank / unrank references


def _check_point(y: list[int], dim: int, pulses: int) -> None:
    if len(y) != dim or sum(abs(int(v)) for v in y) != pulses:
        raise CodecError(f"point {y} is not on the pyramid P({dim}, {pulses}): need D={dim} and sum|y|={pulses}")


def pyramid_rank_reference(y: list[int], pulses: int) -> int:
    """Index of the pyramid point ``y`` (a list of ints) in [0, N(D, K)). Plain reference."""
    dim = len(y)
    _check_dk(dim, pulses)
    _check_point(y, dim, pulses)
    counts = _count_table(dim, pulses)
    cum = _cumulative_table(dim, pulses)
    index, k = 0, pulses
    for j, v in enumerate(y):
        n = dim - j
        a = abs(int(v))
        if a:
            index += counts[n][k] - 2 * cum[n - 1][k - a]
            if v < 0:
                index += counts[n - 1][k - a]
        k -= a
    return index


def pyramid_unrank_reference(index: int, dim: int, pulses: int) -> list[int]:
    """The pyramid point of ``index`` in P(D, K). Plain reference (inverse of rank)."""
    _check_dk(dim, pulses)
    total = pyramid_count(dim, pulses)
    if not 0 <= index < total:
        raise CodecError(f"index {index} is outside [0, N({dim},{pulses}) = {total})")
    counts = _count_table(dim, pulses)
    cum = _cumulative_table(dim, pulses)
    y, k, r = [], pulses, index
    for j in range(dim):
        n = dim - j
        if r < counts[n - 1][k]:
            y.append(0)
            continue
        # largest a in 1..k with offset(+a) = N(n,k) - 2 A(n-1,k-a) <= r
        a = 1
        while a < k and counts[n][k] - 2 * cum[n - 1][k - a - 1] <= r:
            a += 1
        r -= counts[n][k] - 2 * cum[n - 1][k - a]
        if r >= counts[n - 1][k - a]:
            r -= counts[n - 1][k - a]
            y.append(-a)
        else:
            y.append(a)
        k -= a
    return y


def _largest_pulses(dim: int, fits) -> int:
    """Largest K >= 0 with ``fits(N(D, K))`` true (fits must be monotone); one table, doubled as needed."""
    kmax = 16
    while True:
        row = _count_table(dim, kmax)[dim]
        k = 0
        while k < kmax and fits(row[k + 1]):
            k += 1
        if k < kmax:
            return k
        kmax *= 2


def rank_rows_int64(y: torch.Tensor, k: torch.Tensor, counts: torch.Tensor, cum: torch.Tensor) -> torch.Tensor:
    """Fischer-order indices ``[n]`` of points ``y: [n, D]`` with ``k[i] = sum |y[i]|`` pulses each, from
    int64 tables ``N(d, k)``, ``A(d, k)`` (``[>= D + 1, >= max k + 1]``, every value below 2^62)."""
    mags = y.abs()
    dim = y.shape[1]
    k_left = k.unsqueeze(1) - (mags.cumsum(1) - mags)  # pulses left before position j
    dims_left = torch.arange(dim, 0, -1, device=y.device).expand_as(y)  # n_j = D - j
    after = (k_left - mags).clamp(min=0)
    term = counts[dims_left, k_left] - 2 * cum[dims_left - 1, after]
    term = term + torch.where(y < 0, counts[dims_left - 1, after], 0)
    return torch.where(mags > 0, term, 0).sum(1)


def unrank_rows_int64(r: torch.Tensor, k: torch.Tensor, dim: int, counts: torch.Tensor,
                      cum: torch.Tensor) -> torch.Tensor:
    """Points ``[n, dim]`` of Fischer-order indices ``r: [n]`` with ``k[i]`` pulses each (int64 tables as
    in :func:`rank_rows_int64`); the magnitude at each coordinate is one vectorized count."""
    pulses = counts.shape[1] - 1
    y = torch.zeros(r.shape[0], dim, dtype=torch.int64, device=r.device)
    cand = torch.arange(1, pulses + 1, device=r.device)  # candidate magnitudes a
    for j in range(dim):
        nd = dim - j
        is_zero = r < counts[nd - 1, k]
        need = counts[nd, k] - r
        rest = k.unsqueeze(1) - cand  # k - a, [n, K]
        ok = (rest >= 0) & (2 * cum[nd - 1, rest.clamp(min=0)] >= need.unsqueeze(1))
        a = torch.where(is_zero, 0, ok.sum(1))
        after = (k - a).clamp(min=0)
        r = r - torch.where(is_zero, 0, counts[nd, k] - 2 * cum[nd - 1, after])
        block = counts[nd - 1, after]
        neg = (~is_zero) & (r >= block)
        r = r - torch.where(neg, block, 0)
        y[:, j] = torch.where(neg, -a, a)
        k = k - a
    return y
