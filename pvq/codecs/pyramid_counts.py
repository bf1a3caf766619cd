"""Counts of the pyramid P(D, K) and the plain rank/unrank references of Fischer's order.

Shared by the codec (:mod:`pvq.codecs.pyramid`) and the split order
(:mod:`pvq.codecs.pyramid_split`); see the former for the enumeration order.
"""

from __future__ import annotations

import math
from functools import lru_cache

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
