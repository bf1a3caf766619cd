"""Pyramid vector quantization (Fischer 1986; the Opus/CELT shape quantizer).

The shape of a vector is a point of the integer pyramid

    P(D, K) = {y in Z^D : sum_i |y_i| = K},

projected to the unit sphere, and stored as its exact index in [0, N(D, K)).
No codebook is stored: :func:`pyramid_rank` maps a point to its index and
:func:`pyramid_unrank` maps it back.

Enumeration order (ours): points are ordered by their first coordinate in the
order 0, +1, -1, +2, -2, ..., +K, -K, then recursively by the rest. With
A(n, k) = sum_{i<=k} N(n, i), the points of dimension n and k pulses whose
first coordinate is +a (a >= 1) start at offset N(n, k) - 2 A(n-1, k-a), and
those with -a right after them, N(n-1, k-a) further. So

    rank(y) = sum_j [y_j != 0] (N(n_j, k_j) - 2 A(n_j - 1, k_j - |y_j|)
                                + [y_j < 0] N(n_j - 1, k_j - |y_j|)),

with n_j = D - j dimensions and k_j pulses left at position j.

Two implementations each: Python-int references (``*_reference``) and
vectorized multi-limb tensor paths (:mod:`pvq.codecs.bigint`) for batches;
indices of any size (D up to 256 and beyond, hundreds of bits) are exact.

The codec :class:`PyramidCodec` stores each vector as (shape index, gain
code) combined in one mixed-radix integer of ``ceil(log2(N(D,K) * L))`` bits,
plus one fp16 scale (the group's L2 norm) per group of G vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from . import bigint
from .base import CodecError, CodecOption, Codes, VectorCodec, check_vectors, fp16_exact, register_codec
from .gain import GainQuantizer
from .packing import pack_limbs, unpack_limbs
from .pyramid_search import (  # noqa: F401  (re-exported: the shape search lives there)
    SEARCHES,
    _greedy_fill,
    _greedy_fill_reference,
    pyramid_search_greedy,
    pyramid_search_refine,
)
from .pyramid_split import split_rank, split_supported, split_unrank

from .pyramid_counts import (  # noqa: F401  (re-exported: the counts and references live there)
    _check_dk,
    _check_point,
    _count_table,
    _cumulative_table,
    _largest_pulses,
    max_pulses_for_bits,
    pyramid_bits,
    pyramid_count,
    pyramid_rank_reference,
    pyramid_unrank_reference,
    rank_rows_int64,
    unrank_rows_int64,
)

# ---------------------------------------------------------------- vectorized rank / unrank


@dataclass(frozen=True)
class PyramidTables:
    """Limb tensors of N(n, k) ``[D+1, K+1, L]`` and A(n, k) ``[D+1, K+1, L]``."""

    dim: int
    pulses: int
    counts: torch.Tensor
    cumulative: torch.Tensor
    twice_cumulative: torch.Tensor  # 2 A(n, k), normalized

    @property
    def limbs(self) -> int:
        return self.counts.shape[-1]


@lru_cache(maxsize=32)
def _tables_cpu(dim: int, pulses: int, extra_limb: bool) -> PyramidTables:
    counts = _count_table(dim, pulses)
    cum = _cumulative_table(dim, pulses)
    limbs = bigint.num_limbs(2 * max(cum[dim][pulses], 1)) + int(extra_limb)
    return PyramidTables(
        dim,
        pulses,
        bigint.from_ints([list(r) for r in counts], limbs),
        bigint.from_ints([list(r) for r in cum], limbs),
        bigint.from_ints([[2 * v for v in row] for row in cum], limbs),
    )


def pyramid_tables(dim: int, pulses: int, device=None) -> PyramidTables:
    """Count tables as limb tensors on ``device`` (cached on CPU)."""
    _check_dk(dim, pulses)
    t = _tables_cpu(dim, pulses, False)
    if device is None or torch.device(device) == t.counts.device:
        return t
    return PyramidTables(
        dim, pulses, t.counts.to(device), t.cumulative.to(device), t.twice_cumulative.to(device)
    )


def pyramid_index_limbs(dim: int, pulses: int) -> int:
    """Limb count of the indices :func:`pyramid_rank` returns for P(D, K)."""
    return 2 if _int64_tables_cpu(dim, pulses) is not None else _tables_cpu(dim, pulses, False).limbs


def pyramid_rank(y: torch.Tensor, pulses: int, chunk: int = 65536) -> torch.Tensor:
    """Indices of pyramid points ``y: [n, D]`` (int) as limbs ``[n, L]`` (vectorized, exact)."""
    if y.dim() != 2:
        raise CodecError(f"points must have shape [n, D], got {tuple(y.shape)}")
    n, dim = y.shape
    tables = pyramid_tables(dim, pulses, y.device)
    y = y.to(torch.int64)
    mags = y.abs()
    if n and not bool((mags.sum(1) == pulses).all()):
        raise CodecError(f"every point must satisfy sum|y| = K = {pulses}")
    small = _int64_tables(dim, pulses, y.device)
    out = []
    for start in range(0, n, chunk):
        if small is not None:
            out.append(_rank_chunk_int64(y[start : start + chunk], mags[start : start + chunk], small))
        else:
            out.append(_rank_chunk(y[start : start + chunk], mags[start : start + chunk], tables))
    if not out:
        return torch.zeros(0, tables.limbs, dtype=torch.int64, device=y.device)
    return torch.cat(out)


INT64_LIMIT = 1 << 62


@lru_cache(maxsize=32)
def _int64_tables_cpu(dim: int, pulses: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    cum = _cumulative_table(dim, pulses)
    if cum[dim][pulses] >= INT64_LIMIT:
        return None
    counts = torch.tensor([list(r) for r in _count_table(dim, pulses)], dtype=torch.int64)
    return counts, torch.tensor([list(r) for r in cum], dtype=torch.int64)


def _int64_tables(dim: int, pulses: int, device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(N, A) as int64 ``[D+1, K+1]`` tables when every value is below 2^62, else None."""
    t = _int64_tables_cpu(dim, pulses)
    if t is None:
        return None
    return t[0].to(device), t[1].to(device)


def _rank_chunk_int64(y: torch.Tensor, mags: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    counts, cum = tables
    k = torch.full((y.shape[0],), counts.shape[1] - 1, dtype=torch.int64, device=y.device)
    index = rank_rows_int64(y, k, counts, cum)
    return torch.stack([index & bigint.LIMB_MASK, index >> bigint.LIMB_BITS], dim=1)


def _unrank_int64(r: torch.Tensor, dim: int, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """int64 indices ``[n]`` -> points ``[n, D]``; the magnitude search is one vectorized count."""
    counts, cum = tables
    return unrank_rows_int64(r, torch.full_like(r, counts.shape[1] - 1), dim, counts, cum)


def _rank_chunk(y: torch.Tensor, mags: torch.Tensor, t: PyramidTables) -> torch.Tensor:
    n, dim = y.shape
    k_left = t.pulses - (mags.cumsum(1) - mags)  # pulses left before position j: [n, D]
    dims_left = torch.arange(dim, 0, -1, device=y.device).expand(n, dim)  # n_j = D - j
    after = (k_left - mags).clamp(min=0)
    nonzero = (mags > 0).unsqueeze(-1)
    neg = (y < 0).unsqueeze(-1)
    term = (
        t.counts[dims_left, k_left]
        - 2 * t.cumulative[dims_left - 1, after]
        + torch.where(neg, t.counts[dims_left - 1, after], 0)
    )
    term = torch.where(nonzero, term, 0)
    return bigint.normalize(term.sum(1))


def pyramid_unrank(index: torch.Tensor, dim: int, pulses: int) -> torch.Tensor:
    """Pyramid points ``[n, D]`` (int64) of limb indices ``index: [n, L]`` (vectorized, exact).

    Walks the D positions in order; at each, the magnitude is found by a
    vectorized binary search over a in 1..k on the cumulative table.
    """
    tables = pyramid_tables(dim, pulses, index.device)
    L = tables.limbs
    if index.dim() != 2:
        raise CodecError(f"indices must be limbs of shape [n, L], got {tuple(index.shape)}")
    if index.shape[1] < L:
        index = torch.nn.functional.pad(index, (0, L - index.shape[1]))
    elif index.shape[1] > L:
        if bool(index[:, L:].any()):
            raise CodecError(f"an index is >= N({dim},{pulses})")
        index = index[:, :L]
    n = index.shape[0]
    total = tables.counts[dim, pulses]
    if n and bool((bigint.compare(index, total) >= 0).any()):
        raise CodecError(f"an index is outside [0, N({dim},{pulses}))")
    small = _int64_tables(dim, pulses, index.device)
    if small is not None:
        return _unrank_int64(bigint.to_int64(index), dim, small)
    # the full magnitude search holds [rows, K, L]; the binary search only [rows, L]
    per_row = pulses * L if pulses <= FULL_SEARCH_PULSES else L
    rows_per_chunk = max(1, (1 << 24) // max(1, per_row))
    return torch.cat(
        [_unrank_limbs(index[s : s + rows_per_chunk], tables) for s in range(0, n, rows_per_chunk)]
    ) if n else torch.zeros(0, dim, dtype=torch.int64, device=index.device)


FULL_SEARCH_PULSES = 24  # above this, the magnitude search is a binary search


def _unrank_limbs(r: torch.Tensor, t: PyramidTables) -> torch.Tensor:
    """Limb indices ``[n, L]`` -> points ``[n, D]``; magnitudes by one vectorized compare per position."""
    dim, pulses = t.dim, t.pulses
    counts, twice_cum = t.counts, t.twice_cumulative
    n = r.shape[0]
    k = torch.full((n,), pulses, dtype=torch.int64, device=r.device)
    y = torch.zeros(n, dim, dtype=torch.int64, device=r.device)
    cand = torch.arange(1, pulses + 1, device=r.device)
    steps = max(1, pulses.bit_length())
    for j in range(dim):
        nd = dim - j
        is_zero = bigint.compare(r, counts[nd - 1, k]) < 0
        need = bigint.normalize(counts[nd, k] - r)
        if pulses <= FULL_SEARCH_PULSES:  # one [n, K] compare
            rest = k.unsqueeze(1) - cand
            ok = (rest >= 0) & (bigint.compare(twice_cum[nd - 1, rest.clamp(min=0)], need.unsqueeze(1)) >= 0)
            a = torch.where(is_zero, 0, ok.sum(1))
        else:  # binary search: largest a in [1, k] with 2 A(nd-1, k-a) >= need (A falls as a grows)
            lo, hi = torch.ones_like(k), k.clamp(min=1)
            for _ in range(steps):
                mid = (lo + hi + 1) // 2
                ok = bigint.compare(twice_cum[nd - 1, (k - mid).clamp(min=0)], need) >= 0
                lo = torch.where(ok, mid, lo)
                hi = torch.where(ok, hi, mid - 1)
            a = torch.where(is_zero, 0, lo)
        after = (k - a).clamp(min=0)
        offset = counts[nd, k] - twice_cum[nd - 1, after]
        r = bigint.normalize(r - torch.where(is_zero.unsqueeze(1), 0, offset))
        block = counts[nd - 1, after]
        is_neg = (~is_zero) & (bigint.compare(r, block) >= 0)
        r = bigint.normalize(r - torch.where(is_neg.unsqueeze(1), block, 0))
        y[:, j] = torch.where(is_neg, -a, a)
        k = k - a
    return y


INDEX_ORDERS = ("fischer", "split")
"""How shape indices number the points (same points, same count, same bits): Fischer's order
(coordinate by coordinate) or the split order of :mod:`pvq.codecs.pyramid_split` (GPU-friendly)."""


def pyramid_cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """cos(x, y) per row, ``[n]``."""
    yd = y.double()
    xd = x.double()
    return (xd * yd).sum(1) / (xd.norm(dim=1) * yd.norm(dim=1)).clamp(min=1e-300)


# ---------------------------------------------------------------- the codec


class PyramidCodec(VectorCodec):
    """PVQ gain-shape codec.

    Each vector x (D numbers) becomes a shape y in P(D, K) (stored as its
    index) and a gain code; G consecutive vectors share one fp16 scale, the
    group's L2 norm. The gain is the amplitude of x along the unit shape
    (``gain_target="projection"``, the least-squares gain <x, y>/|y|) or its
    norm (``"norm"``, the paper's choice), divided by the scale and quantized
    with a Beta-law quantizer (``gain_quantizer="lloydmax"`` or ``"quantile"``).
    Stored per vector: index * L + gain_code in ceil(log2(N(D,K) * L)) bits.
    """

    name = "pvq"

    def __init__(
        self,
        dim: int,
        pulses: int,
        group_size: int = 16,
        gain_bits: int = 4,
        gain_quantizer: str = "lloydmax",
        gain_target: str = "projection",
        search: str = "greedy",
        index_order: str = "fischer",
    ):
        _check_dk(dim, pulses)
        if pulses < 1:
            raise CodecError("PVQ needs K >= 1 pulses (K = 0 has a single point and carries no shape)")
        if not isinstance(group_size, int) or group_size < 2:
            raise CodecError(f"group_size (vectors per scale) must be an integer >= 2, got {group_size!r}")
        if not isinstance(gain_bits, int) or not 1 <= gain_bits <= 12:
            raise CodecError(f"gain_bits must be an integer in [1, 12], got {gain_bits!r}")
        if gain_quantizer not in ("lloydmax", "quantile"):
            raise CodecError(f"gain_quantizer must be 'lloydmax' or 'quantile', got {gain_quantizer!r}")
        if gain_target not in ("projection", "norm"):
            raise CodecError(f"gain_target must be 'projection' or 'norm', got {gain_target!r}")
        if search not in SEARCHES:
            raise CodecError(f"search must be one of {sorted(SEARCHES)}, got {search!r}")
        if index_order not in INDEX_ORDERS:
            raise CodecError(f"index_order must be one of {sorted(INDEX_ORDERS)}, got {index_order!r}")
        if index_order == "split" and not split_supported(dim, pulses):
            raise CodecError(
                f"index_order='split' needs D = 4 * 2^m (4, 8, 16, 32), N(D, K) < 2^62 and A(D, K) < 2^63; D={dim}, K={pulses} "
                "has no split order (use index_order='fischer', or a smaller D or rate)"
            )
        self.dim = dim
        self.pulses = pulses
        self.group_size = group_size
        self.gain_bits = gain_bits
        self.gain_quantizer_kind = gain_quantizer
        self.gain_target = gain_target
        self.search = search
        self.index_order = index_order
        make = GainQuantizer.lloyd_max if gain_quantizer == "lloydmax" else GainQuantizer.beta_quantile
        self.gain = make(dim, group_size, gain_bits)
        self.num_shapes = pyramid_count(dim, pulses)
        self.radix = self.num_shapes * self.gain.num_levels
        self.code_bits = (self.radix - 1).bit_length()

    def config(self) -> dict:
        return {
            "dim": self.dim,
            "pulses": self.pulses,
            "group_size": self.group_size,
            "gain_bits": self.gain_bits,
            "gain_quantizer": self.gain_quantizer_kind,
            "gain_target": self.gain_target,
            "search": self.search,
            "index_order": self.index_order,
        }

    # -- rate
    def nominal_bits_per_weight(self) -> float:
        return self.code_bits / self.dim + 16 / (self.dim * self.group_size)

    def describe(self) -> str:
        return (
            f"pvq(D={self.dim}, K={self.pulses}, G={self.group_size}, gain={self.gain_quantizer_kind}"
            f"{self.gain_bits}b/{self.gain_target}, search={self.search}"
            + (", split index" if self.index_order == "split" else "") + ")"
        )

    # -- coding
    def group_scales(self, x: torch.Tensor) -> torch.Tensor:
        return fp16_exact(x.float().pow(2).sum(dim=(1, 2)).sqrt())

    def shapes(self, x: torch.Tensor) -> torch.Tensor:
        """Pyramid points ``[n, D]`` for ``x: [n, D]`` with the configured search."""
        return SEARCHES[self.search](x, self.pulses)

    def _shape_and_amplitude(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        check_vectors(x, self.dim)
        y = self.shapes(x)
        unit = y.double() / y.double().norm(dim=1, keepdim=True)
        if self.gain_target == "projection":
            amplitude = (x.double() * unit).sum(1)
        else:
            amplitude = x.double().norm(dim=1)
        return y, unit, amplitude

    def encode(self, x: torch.Tensor, scale: torch.Tensor) -> Codes:
        y, _, amplitude = self._shape_and_amplitude(x)
        return self._codes(y, amplitude, scale)

    def quantize(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))`` without computing indices (same result, much faster)."""
        _, unit, amplitude = self._shape_and_amplitude(x)
        return self._reconstruct(unit, self._gain_code(amplitude, scale), scale)

    def _gain_code(self, amplitude: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        safe = scale.double().clamp(min=1e-30)
        return self.gain.encode((amplitude / safe).clamp(min=0).float())

    def encode_hessian(self, x: torch.Tensor, scale: torch.Tensor, hessian: torch.Tensor) -> Codes:
        """Like :meth:`encode`, with the Hessian-optimal gain s* = v^T H x / v^T H v.

        ``hessian``: the D x D block of the layer Hessian for these columns;
        v is the unit shape. Minimizes (x - s v)^T H (x - s v) over s.
        """
        y, _, amplitude = self._shape_and_hessian_amplitude(x, hessian)
        return self._codes(y, amplitude, scale)

    def _shape_and_hessian_amplitude(self, x, hessian):
        check_vectors(x, self.dim)
        y = self.shapes(x)
        unit = y.double() / y.double().norm(dim=1, keepdim=True)
        hv = unit @ hessian.double()
        amplitude = (hv * x.double()).sum(1) / (hv * unit).sum(1).clamp(min=1e-300)
        return y, unit, amplitude

    def encode_decode(self, x, scale, zero=None, hessian=None):
        """Codes and reconstruction without unranking (the shape is at hand); no zero points."""
        if hessian is None:
            y, unit, amplitude = self._shape_and_amplitude(x)
        else:
            y, unit, amplitude = self._shape_and_hessian_amplitude(x, hessian)
        codes = self._codes(y, amplitude, scale)
        return codes, self._reconstruct(unit, codes["gain"], scale)

    def _reconstruct(self, unit: torch.Tensor, gain_code: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        amp = self.gain.decode(gain_code).double() * scale.double()
        return (unit * amp.unsqueeze(1)).float()

    def _codes(self, y: torch.Tensor, amplitude: torch.Tensor, scale: torch.Tensor) -> Codes:
        return {"index": self._rank(y), "gain": self._gain_code(amplitude, scale)}

    def _rank(self, y: torch.Tensor) -> torch.Tensor:
        """Shape indices as limbs ``[n, L]`` in the codec's index order."""
        if self.index_order == "fischer":
            return pyramid_rank(y, self.pulses)
        index = split_rank(y, self.pulses)
        limbs = torch.stack([index & bigint.LIMB_MASK, index >> bigint.LIMB_BITS], dim=1)
        width = pyramid_index_limbs(self.dim, self.pulses)
        return torch.nn.functional.pad(limbs, (0, max(0, width - 2)))[:, :width]

    def points(self, index: torch.Tensor) -> torch.Tensor:
        """Pyramid points ``[n, D]`` int64 of shape indices (limbs ``[n, L]``) in the codec's order."""
        if self.index_order == "fischer":
            return pyramid_unrank(index, self.dim, self.pulses)
        return split_unrank(bigint.to_int64(index), self.dim, self.pulses)

    def decode(self, codes: Codes, scale: torch.Tensor) -> torch.Tensor:
        y = self.points(codes["index"]).double()
        return self._reconstruct(y / y.norm(dim=1, keepdim=True), codes["gain"], scale)

    # -- integer points (for products computed on the points: pvq.kernels.int_product)
    def _multiplier(self, y: torch.Tensor, gain_code: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``m`` with ``m * y == decode``: gain level * scale / |y|, float64 ``[n]``."""
        return self.gain.decode(gain_code).double() * scale.double() / y.double().norm(dim=1)

    def project(self, x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pyramid points ``y: [n, D]`` (int64) and multipliers ``m: [n]`` (float64) of ``x: [n, D]``
        with ``quantize(x, scale) == (m * y)`` up to float32 rounding; no indices computed."""
        y, _, amplitude = self._shape_and_amplitude(x)
        return y, self._multiplier(y, self._gain_code(amplitude, scale), scale)

    def decode_points(self, codes: Codes, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Points ``[n, D]`` (int64) and multipliers ``[n]`` (float64) of stored codes:
        ``decode(codes, scale) == m * y`` up to float32 rounding."""
        y = self.points(codes["index"])
        return y, self._multiplier(y, codes["gain"], scale)

    def pack(self, codes: Codes) -> dict[str, torch.Tensor]:
        combined = bigint.add_small(bigint.mul_small(codes["index"], self.gain.num_levels), codes["gain"])
        return {"codes": pack_limbs(combined, self.code_bits)}

    def unpack(self, stored: dict[str, torch.Tensor], n: int) -> Codes:
        combined = unpack_limbs(stored["codes"], self.code_bits, n)
        index, gain = bigint.divmod_small(combined, self.gain.num_levels)
        width = pyramid_index_limbs(self.dim, self.pulses)
        if index.shape[1] < width:
            index = torch.nn.functional.pad(index, (0, width - index.shape[1]))
        return {"index": index[:, :width], "gain": gain}


def pulses_for_rate(bits: float, dim: int, group_size: int = 16, gain_bits: int = 4) -> int:
    """Largest K whose stored rate (codes + fp16 scale) is at most ``bits`` per weight."""
    budget = bits * dim - 16 / group_size  # bits per vector for index+gain
    levels = 2**gain_bits
    k = _largest_pulses(dim, lambda count: (count * levels - 1).bit_length() <= budget + 1e-9)
    if k < 1:
        raise CodecError(
            f"no pulse count K reaches {bits} bits per weight at D={dim}, G={group_size}, "
            f"{gain_bits} gain bits: the gain and scale alone take "
            f"{(gain_bits + 16 / group_size) / dim:.3f} bits per weight; raise the rate, raise D or "
            "lower gain_bits"
        )
    return k


GAIN_BITS_CHOICES = (1, 2, 3, 4, 5)


@lru_cache(maxsize=256)
def best_gain_bits(bits: float, dim: int, group_size: int, gain_quantizer: str = "lloydmax") -> int:
    """Gain bits that give the lowest MSE at ``bits`` per weight on the Gaussian model.

    Spending a gain bit costs shape pulses; which split wins depends on D and
    the rate. Rotated weights are close to i.i.d. Gaussian, so the choice is
    made once on a fixed seeded Gaussian sample (about 2^15 numbers) and cached.
    """
    vectors = max(group_size, (1 << 15) // dim // group_size * group_size)
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(vectors, dim, generator=gen)
    scale = fp16_exact(x.view(-1, group_size * dim).norm(dim=1)).repeat_interleave(group_size)
    best, best_mse = None, float("inf")
    for gain_bits in GAIN_BITS_CHOICES:
        try:
            pulses = pulses_for_rate(bits, dim, group_size, gain_bits)
        except CodecError:
            continue
        codec = PyramidCodec(
            dim, pulses, group_size=group_size, gain_bits=gain_bits, gain_quantizer=gain_quantizer,
            search="greedy",
        )
        mse = float((codec.quantize(x, scale) - x).pow(2).mean())
        if mse < best_mse:
            best, best_mse = gain_bits, mse
    if best is None:
        pulses_for_rate(bits, dim, group_size, GAIN_BITS_CHOICES[0])  # raises the explanatory error
    return best


@register_codec(
    "pvq", "pyramid VQ: shape index on P(D,K) + Beta-law gain + fp16 group norm", default_dim=32,
    options=(
        CodecOption("gain_quantizer", str, "lloydmax", "PVQ gains: lloydmax (MSE-optimal) or quantile (the paper's)",
                    ("lloydmax", "quantile")),
        CodecOption("gain_target", str, "projection", "PVQ gain: projection <x, y/|y|> or norm |x| (the paper's)",
                    ("projection", "norm")),
        CodecOption("search", str, "greedy", "PVQ shape search: greedy (Opus) or refine (pulse moves)",
                    ("greedy", "refine")),
        CodecOption("gain_bits", int, None, "PVQ gain bits (default: the best split for the rate)"),
        CodecOption("index_order", str, "auto",
                    "PVQ shape index order: fischer, split (same bits; decoded by the fast GPU kernels) or auto "
                    "(split where D = 4 * 2^m and the index fits 62 bits)", ("auto", "fischer", "split")),
    ),
)
def pvq_from_rate(
    bits: float,
    dim: int,
    group_size: int = 16,
    gain_bits: int | None = None,
    **options,
) -> PyramidCodec:
    """The PVQ codec with the largest K whose measured rate is at most ``bits``.

    ``gain_bits=None`` picks the split between gain and shape bits that
    minimizes MSE on the Gaussian model (:func:`best_gain_bits`).
    """
    if gain_bits is None:
        gain_bits = best_gain_bits(float(bits), dim, group_size, options.get("gain_quantizer", "lloydmax"))
    pulses = pulses_for_rate(bits, dim, group_size, gain_bits)
    if options.get("index_order", "auto") == "auto":
        options["index_order"] = "split" if split_supported(dim, pulses) else "fischer"
    return PyramidCodec(dim, pulses, group_size=group_size, gain_bits=gain_bits, **options)
