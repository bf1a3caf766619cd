"""Scalar quantizers: every coordinate of a vector is coded on its own.

* :func:`lloyd_max` - a generic 1-D Lloyd-Max (MSE-optimal fixed-rate) solver
  for a continuous law given by its cdf (and optionally ppf/pdf) on a support;
  :func:`gaussian_lloyd_max` caches the unit-Gaussian solution.
* Codecs (registered; any ``dim``; a group of ``group_weights`` consecutive
  weights shares one fp16 scale):

  - ``uniform``: round-to-nearest on ``2^b`` evenly spaced levels. Asymmetric
    min/max with a ``b``-bit zero point per group (GPTQ's default, group of
    128 weights) or symmetric absmax; optional MSE-optimal clip search.
  - ``nf4``: QLoRA NormalFloat levels times the group absmax (block of 64
    weights); the exact NF4 table at 4 bits, the same construction at 2..8.
  - ``lloydmax``: Gaussian Lloyd-Max levels times the group RMS.

Codes are the level indices ``q: [n, D]`` packed with ``pack_bits`` at ``b``
bits each. The per-group scale is stored by the flow (``quantize_grouped``),
never by :meth:`pack`; the uniform codec's zero points are stored by pack().
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import torch
from scipy import optimize, stats

from .base import CodecError, CodecOption, Codes, VectorCodec, check_vectors, fp16_exact, register_codec
from .packing import pack_bits, unpack_bits

FP16_TINY = 2.0**-24  # smallest positive fp16 (subnormal); floor for stored scales

# ---------------------------------------------------------------- Lloyd-Max


@dataclass(frozen=True)
class LloydMaxResult:
    """MSE-optimal scalar quantizer of a law.

    ``levels`` [L] sorted reconstruction points, ``thresholds`` [L-1] decision
    boundaries (midpoints of neighbouring levels), ``mse`` the expected squared
    error under the law, ``iterations`` used by the solver.
    """

    levels: np.ndarray
    thresholds: np.ndarray
    mse: float
    iterations: int


def lloyd_max(
    num_levels: int,
    cdf: Callable[[np.ndarray], np.ndarray],
    support: tuple[float, float],
    ppf: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    tail: float = 1e-13,
    grid_points: int = 1 << 18,
    tol: float = 1e-12,
    noise_floor: float = 1e-7,
    max_iter: int = 100_000,
) -> LloydMaxResult:
    """Lloyd-Max levels of a continuous 1-D law with ``cdf`` on ``support``.

    The support is cut to ``[ppf(tail), ppf(1 - tail)]`` when ``ppf`` is given
    (or found by bisection on ``cdf`` when the support is infinite). The law is
    then held as exact cell masses ``cdf(x_{k+1}) - cdf(x_k)`` on a fine grid
    (so singular densities are fine), uniform inside each grid cell; the grid
    is even in x, merged with one even in probability when ``ppf`` is given.
    Masses and moments of every quantizer cell are exact for that
    piecewise-uniform law, so Lloyd steps never increase its MSE. Lloyd iterations (levels =
    cell centroids, thresholds = midpoints) start from the high-resolution
    optimum (point density proportional to pdf^(1/3)); each iteration takes
    a safeguarded Newton step on ``centroid(levels) = levels`` (tridiagonal
    Jacobian), or a plain Lloyd step when Newton does not reduce the residual.
    It stops when the mass-weighted centroid offsets ``L * max_i p_i |c_i - l_i|``
    fall below ``tol`` times the law's spread, or when Newton stalls below
    ``noise_floor`` times the spread (round-off of the cell moments).
    """
    if not isinstance(num_levels, int) or num_levels < 1:
        raise CodecError(f"num_levels must be a positive integer, got {num_levels!r}")
    lo, hi = (float(support[0]), float(support[1]))
    if not lo < hi:
        raise CodecError(f"support must be (low, high) with low < high, got {support!r}")
    lo, hi = _cut_support(cdf, ppf, lo, hi, tail)

    edges = np.linspace(lo, hi, grid_points // 2 + 1)
    if ppf is not None:  # add a grid even in probability: fine where the mass is dense
        qs = np.asarray(ppf(np.linspace(0.0, 1.0, grid_points // 2 + 1)[1:-1]), dtype=np.float64)
        edges = np.union1d(edges, qs[np.isfinite(qs) & (qs > lo) & (qs < hi)])
    cum = np.asarray(cdf(edges), dtype=np.float64)
    mass = np.clip(np.diff(cum), 0.0, None)
    total = mass.sum()
    if not total > 0:
        raise CodecError("the law has no mass on the given support")
    mass /= total
    mid = 0.5 * (edges[1:] + edges[:-1])
    width = np.diff(edges)
    m0 = np.concatenate([[0.0], np.cumsum(mass)])
    m1 = np.concatenate([[0.0], np.cumsum(mass * mid)])
    m2 = np.concatenate([[0.0], np.cumsum(mass * (mid * mid + width * width / 12.0))])
    mean = m1[-1]
    spread = math.sqrt(max(m2[-1] - mean * mean, 0.0)) or (hi - lo)

    density_at = mass / width  # the law held as a piecewise-uniform density on the grid
    last = density_at.shape[0] - 1

    def cumulative(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact mass, first and second moment of the grid law below each t."""
        k = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, last)
        e, dens = edges[k], density_at[k]
        t = np.clip(t, e, edges[k + 1])
        return (
            m0[k] + dens * (t - e),
            m1[k] + dens * (t * t - e * e) / 2.0,
            m2[k] + dens * (t * t * t - e * e * e) / 3.0,
        )

    def cell_moments(th: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c0, c1, c2 = cumulative(np.concatenate([[lo], th, [hi]]))
        return np.diff(c0), np.diff(c1), np.diff(c2)

    if num_levels == 1:
        levels = np.array([mean])
        return LloydMaxResult(levels, np.zeros(0), float(m2[-1] - mean * mean), 0)

    # start: high-resolution optimal point density ~ pdf^(1/3)
    comp = np.concatenate([[0.0], np.cumsum(np.cbrt(density_at) * width)])
    comp /= comp[-1]
    levels = np.interp((np.arange(num_levels) + 0.5) / num_levels, comp, edges)

    def residual(lv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        th = 0.5 * (lv[1:] + lv[:-1])
        p, s1, _ = cell_moments(th)
        centroid = np.where(p > 0, s1 / np.where(p > 0, p, 1.0), lv)
        return centroid - lv, centroid, p

    def ordered(lv: np.ndarray) -> bool:
        return bool(np.all(np.diff(lv) > 0) and lv[0] > lo and lv[-1] < hi)

    def size(f: np.ndarray, p: np.ndarray) -> float:
        # centroid offsets weighted by cell mass (the MSE gradient, times L): cells of
        # tiny mass in the tails have noisy centroids and matter little
        return float(np.abs(f * p).max()) * num_levels

    it = 0
    f, centroid, p = residual(levels)
    err = size(f, p)
    for it in range(1, max_iter + 1):
        if err <= tol * spread:
            break
        step = _newton_step(levels, centroid, p, f, edges, density_at) if np.all(p > 0) else None
        new_err = math.inf
        if step is not None:
            alpha = 1.0
            while alpha >= 1.0 / 64:
                cand = levels + alpha * step
                if ordered(cand):
                    fc, cc, pc = residual(cand)
                    new_err = size(fc, pc)
                    if new_err < err:
                        levels, f, centroid, p = cand, fc, cc, pc
                        break
                alpha *= 0.5
        if new_err < err:
            stalled = new_err > 0.5 * err
            err = new_err
            if stalled and err <= noise_floor * spread:
                break  # at the round-off floor of the cell moments
            continue
        if err <= noise_floor * spread:
            break
        # plain Lloyd step: levels <- centroids
        levels = np.maximum.accumulate(centroid)
        f, centroid, p = residual(levels)
        err = size(f, p)
    th = 0.5 * (levels[1:] + levels[:-1])
    return LloydMaxResult(levels, th, _piecewise_mse(edges, density_at, levels, th), it)


def _piecewise_mse(edges: np.ndarray, density: np.ndarray, levels: np.ndarray, th: np.ndarray) -> float:
    """Squared error of quantizer (levels, th) under a piecewise-uniform law.

    Integrates dens * (x - level)^2 on every piece between grid edges and
    thresholds in coordinates local to the level (no cancellation).
    """
    cuts = np.union1d(edges, th[(th > edges[0]) & (th < edges[-1])])
    a, b = cuts[:-1], cuts[1:]
    mid = 0.5 * (a + b)
    dens = density[np.clip(np.searchsorted(edges, mid, side="right") - 1, 0, density.shape[0] - 1)]
    lv = levels[np.searchsorted(th, mid)]
    return float(np.sum(dens * ((b - lv) ** 3 - (a - lv) ** 3)) / 3.0)


def _newton_step(levels, centroid, p, f, edges, density_at) -> np.ndarray | None:
    """Newton step for ``centroid(levels) - levels = 0`` (tridiagonal Jacobian).

    Cell i spans [t_{i-1}, t_i] with t_i = (l_i + l_{i+1}) / 2; moving a
    boundary t changes the centroid c by pdf(t) (t - c) / mass per unit.
    """
    from scipy.linalg import solve_banded

    n = levels.shape[0]
    th = 0.5 * (levels[1:] + levels[:-1])
    k = np.clip(np.searchsorted(edges, th) - 1, 0, density_at.shape[0] - 1)
    pdf_t = density_at[k]
    # d c_i / d t_i (upper boundary of cell i) and d c_i / d t_{i-1} (lower boundary)
    d_up = np.zeros(n)
    d_lo = np.zeros(n)
    d_up[:-1] = pdf_t * (th - centroid[:-1]) / p[:-1]
    d_lo[1:] = pdf_t * (centroid[1:] - th) / p[1:]
    diag = 0.5 * (d_up + d_lo) - 1.0
    upper = 0.5 * d_up[:-1]  # J[i, i+1]
    lower = 0.5 * d_lo[1:]  # J[i, i-1]
    ab = np.zeros((3, n))
    ab[0, 1:] = upper
    ab[1] = diag
    ab[2, :-1] = lower
    try:
        step = solve_banded((1, 1), ab, -f)
    except (np.linalg.LinAlgError, ValueError):
        return None
    return step if np.all(np.isfinite(step)) else None


def lloyd_max_reference(
    pdf: Callable[[float], float],
    support: tuple[float, float],
    init_levels: np.ndarray,
    iters: int = 500,
) -> LloydMaxResult:
    """Plain Lloyd iterations with scipy quadrature (slow; reference for :func:`lloyd_max`).

    ``support`` must be finite (cut the tails yourself); levels start at
    ``init_levels`` and each iteration moves every level to its cell centroid.
    """
    from scipy import integrate

    lo, hi = support
    levels = np.sort(np.asarray(init_levels, dtype=np.float64))

    def moments(a: float, b: float) -> tuple[float, float, float]:
        opts = dict(limit=200, epsabs=1e-14, epsrel=1e-12)
        return (
            integrate.quad(pdf, a, b, **opts)[0],
            integrate.quad(lambda t: t * pdf(t), a, b, **opts)[0],
            integrate.quad(lambda t: t * t * pdf(t), a, b, **opts)[0],
        )

    for _ in range(iters):
        b = np.concatenate([[lo], 0.5 * (levels[1:] + levels[:-1]), [hi]])
        new = levels.copy()
        for i in range(levels.shape[0]):
            p, s1, _ = moments(b[i], b[i + 1])
            if p > 0:
                new[i] = s1 / p
        levels = new
    b = np.concatenate([[lo], 0.5 * (levels[1:] + levels[:-1]), [hi]])
    mse = 0.0
    for i in range(levels.shape[0]):
        p, s1, s2 = moments(b[i], b[i + 1])
        mse += s2 - 2.0 * levels[i] * s1 + levels[i] ** 2 * p
    return LloydMaxResult(levels, b[1:-1], mse, iters)


def lloyd_max_law(law, num_levels: int, **options) -> LloydMaxResult:
    """:func:`lloyd_max` of a scipy frozen continuous distribution ``law``."""
    return lloyd_max(num_levels, law.cdf, law.support(), law.ppf, **options)


def _cut_support(cdf, ppf, lo: float, hi: float, tail: float) -> tuple[float, float]:
    if ppf is not None:
        with warnings.catch_warnings():  # scipy may warn while inverting far tails; bounds are clamped below
            warnings.simplefilter("ignore", RuntimeWarning)
            a, b = float(ppf(tail)), float(ppf(1.0 - tail))
        if math.isfinite(a):
            lo = max(lo, a)
        if math.isfinite(b):
            hi = min(hi, b)
    if not math.isfinite(lo):
        lo = _bracket(lambda x: float(cdf(x)) - tail, -1.0)
    if not math.isfinite(hi):
        hi = _bracket(lambda x: float(cdf(x)) - (1.0 - tail), 1.0)
    return lo, hi


def _bracket(f, direction: float) -> float:
    """Root of increasing ``f`` found by doubling outward from 0 then brentq."""
    a, b = 0.0, direction
    while (f(b) > 0) == (direction > 0) or f(b) == 0:
        a, b = b, 2 * b
        if abs(b) > 1e300:
            raise CodecError("could not bound the law's support; pass a finite support or a ppf")
    return optimize.brentq(f, min(a, b), max(a, b), xtol=1e-14)


@functools.lru_cache(maxsize=None)
def gaussian_lloyd_max(bits: int) -> LloydMaxResult:
    """Lloyd-Max quantizer of N(0, 1) with ``2^bits`` levels (cached).

    MSE 0.3634 / 0.1175 / 0.03455 / 0.009501 at 1 / 2 / 3 / 4 bits.
    """
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise CodecError(f"bits must be an integer in [1, 8], got {bits!r}")
    law = stats.norm()
    res = lloyd_max(1 << bits, law.cdf, (-math.inf, math.inf), law.ppf)
    # the Gaussian is symmetric: symmetrize away round-off
    lv = 0.5 * (res.levels - res.levels[::-1])
    return LloydMaxResult(lv, 0.5 * (lv[1:] + lv[:-1]), res.mse, res.iterations)


# ---------------------------------------------------------------- NormalFloat levels

NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip
"""QLoRA's NF4 data type (bitsandbytes' table), as float32 values."""


def normal_float_levels(bits: int) -> np.ndarray:
    """NormalFloat levels of ``bits`` bits built as QLoRA builds NF4.

    ``2^(b-1)`` positive and ``2^(b-1) - 1`` negative N(0,1) quantiles taken
    evenly in probability from 1/2 to ``delta``, where ``delta`` is the mean of
    ``1 - 1/(2(2^b - 1))`` and ``1 - 1/(2 * 2^b)``, plus an exact zero, scaled to
    [-1, 1]. Returns ``2^b`` sorted values (float64).
    """
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise CodecError(f"NormalFloat levels need an integer bits in [2, 8], got {bits!r}")
    n = 1 << bits
    delta = 0.5 * ((1.0 - 0.5 / (n - 1)) + (1.0 - 0.5 / n))
    pos = stats.norm.ppf(np.linspace(delta, 0.5, n // 2 + 1)[:-1])
    neg = -stats.norm.ppf(np.linspace(delta, 0.5, n // 2)[:-1])
    v = np.sort(np.concatenate([pos, [0.0], neg]))
    return v / v.max()


def nf_levels(bits: int) -> np.ndarray:
    """Levels of the ``nf4`` codec at ``bits``: the exact NF4 table at 4 bits."""
    if bits == 4:
        return np.asarray(NF4_LEVELS, dtype=np.float64)
    return normal_float_levels(bits)


# ---------------------------------------------------------------- shared helpers


def _code_bits(bits: float, what: str, lowest: int = 1) -> int:
    if not (isinstance(bits, (int, float)) and math.isfinite(bits)):
        raise CodecError(f"{what}: bits must be a finite number, got {bits!r}")
    b = int(math.floor(bits + 0.5))
    if not lowest <= b <= 8:
        raise CodecError(
            f"{what} codes whole bits per weight from {lowest} to 8; {bits} rounds to {b}. "
            f"Ask for a rate between {lowest - 0.5} and 8.5 bits per weight"
        )
    return b


def _group_size(dim: int, group_weights: int) -> int:
    if not isinstance(dim, int) or dim < 1:
        raise CodecError(f"dim must be a positive integer, got {dim!r}")
    if not isinstance(group_weights, int) or group_weights < dim or group_weights % dim:
        raise CodecError(
            f"group_weights={group_weights!r} must be a positive multiple of dim={dim} "
            f"(e.g. {dim * max(1, 128 // dim)})"
        )
    return group_weights // dim


def _safe(scale: torch.Tensor) -> torch.Tensor:
    """Per-vector scale [n] -> [n, 1] with zeros replaced by 1 (their x is 0 or lost)."""
    s = scale.float().reshape(-1, 1)
    return torch.where(s > 0, s, torch.ones_like(s))


def _check_scale(scale: torch.Tensor, n: int) -> None:
    if scale.reshape(-1).shape[0] != n:
        raise CodecError(f"need one scale per vector ({n}), got {tuple(scale.shape)}")


class _ScalarCodec(VectorCodec):
    """Coordinates quantized independently to ``2^bits`` levels; codes ``q: [n, D]``."""

    bits: int
    group_weights: int

    def _setup(self, bits: int, dim: int, group_weights: int) -> None:
        if not isinstance(bits, int) or not 1 <= bits <= 8:
            raise CodecError(f"bits must be an integer in [1, 8], got {bits!r}")
        self.bits = bits
        self.dim = dim
        self.group_weights = group_weights
        self.group_size = _group_size(dim, group_weights)

    def config(self) -> dict:
        return {"bits": self.bits, "dim": self.dim, "group_weights": self.group_weights}

    @property
    def num_levels(self) -> int:
        return 1 << self.bits

    def pack(self, codes: Codes) -> dict[str, torch.Tensor]:
        return {"q": pack_bits(codes["q"], self.bits)}

    def unpack(self, stored: dict[str, torch.Tensor], n: int) -> Codes:
        q = unpack_bits(stored["q"], self.bits, n * self.dim).view(n, self.dim)
        return {"q": q}

    def nominal_bits_per_weight(self) -> float:
        return self.bits + 16.0 / self.group_weights

    def describe(self) -> str:
        return f"{self.name}(b={self.bits}, D={self.dim}, group={self.group_weights} weights)"


class _TableCodec(_ScalarCodec):
    """Fixed table of normalized levels times a per-group scale."""

    levels: torch.Tensor  # [L] float32, sorted
    thresholds: torch.Tensor  # [L-1]

    def _set_levels(self, levels: np.ndarray) -> None:
        lv = torch.as_tensor(np.asarray(levels, dtype=np.float64), dtype=torch.float32)
        self.levels = lv
        self.thresholds = 0.5 * (lv[1:] + lv[:-1])

    def encode(self, x: torch.Tensor, scale: torch.Tensor) -> Codes:
        check_vectors(x, self.dim)
        _check_scale(scale, x.shape[0])
        u = x.float() / _safe(scale.to(x.device))
        th = self.thresholds.to(x.device)
        return {"q": torch.bucketize(u.contiguous(), th, right=False)}

    def decode(self, codes: Codes, scale: torch.Tensor) -> torch.Tensor:
        q = codes["q"]
        return self.levels.to(q.device)[q] * scale.float().to(q.device).reshape(-1, 1)


def encode_table_reference(x: torch.Tensor, scale: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Plain reference of table encoding: index of the nearest level to x/scale (lowest on ties)."""
    s = _safe(scale)
    u = (x.float() / s).reshape(-1).tolist()
    lv = levels.tolist()
    out = []
    for v in u:
        best, bi = math.inf, 0
        for i, l in enumerate(lv):
            d = abs(v - l)
            if d < best:
                best, bi = d, i
        out.append(bi)
    return torch.tensor(out, dtype=torch.int64).view(x.shape)


# ---------------------------------------------------------------- uniform (RTN)


class UniformCodec(_ScalarCodec):
    """Round-to-nearest on ``2^b`` evenly spaced levels per group.

    * ``symmetric=False`` (default, GPTQ's): the range [min(x, 0), max(x, 0)]
      of a group is cut into ``2^b - 1`` steps; the stored scale is the step
      (fp16) and the zero point ``z = round(-min / step)`` in [0, 2^b - 1]
      is stored by :meth:`pack` as a ``b``-bit integer per group.
      x ~ step * (q - z).
    * ``symmetric=True``: midrise levels ``step * (q - (2^b - 1)/2)`` with
      ``step = 2 absmax / (2^b - 1)`` covering [-absmax, absmax]; no zero point.
    * ``mse_clip=True``: the range is shrunk by the factor in
      ``1 - i/clip_grid`` (i < ``max_shrink * clip_grid``) that minimizes the
      group's squared error (GPTQ's ``mse`` option, with the squared norm).

    Asymmetric encode needs each vector's group zero point ``zero=`` (from
    :meth:`group_zero_points` on the whole groups, as every caller of the
    codec contract passes it); with rows that are whole consecutive groups it
    may be left out and is computed from ``x``.
    """

    name: ClassVar[str] = "uniform"

    def __init__(
        self,
        bits: int,
        dim: int = 1,
        group_weights: int = 128,
        *,
        symmetric: bool = False,
        mse_clip: bool = False,
        clip_grid: int = 100,
        max_shrink: float = 0.8,
    ) -> None:
        self._setup(bits, dim, group_weights)
        if not isinstance(clip_grid, int) or clip_grid < 1:
            raise CodecError(f"clip_grid must be a positive integer, got {clip_grid!r}")
        if not 0.0 <= max_shrink < 1.0:
            raise CodecError(f"max_shrink must lie in [0, 1), got {max_shrink!r}")
        self.symmetric = bool(symmetric)
        self.mse_clip = bool(mse_clip)
        self.clip_grid = clip_grid
        self.max_shrink = float(max_shrink)

    def config(self) -> dict:
        return {
            **super().config(),
            "symmetric": self.symmetric,
            "mse_clip": self.mse_clip,
            "clip_grid": self.clip_grid,
            "max_shrink": self.max_shrink,
        }

    @property
    def maxq(self) -> int:
        return (1 << self.bits) - 1

    # -- group parameters
    def _ranges(self, xg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = xg.float().reshape(xg.shape[0], -1)
        if self.symmetric:
            a = flat.abs().amax(dim=1)
            return -a, a
        return flat.amin(dim=1).clamp(max=0.0), flat.amax(dim=1).clamp(min=0.0)

    def group_zero_points(self, x: torch.Tensor) -> torch.Tensor | None:
        """Zero point of each group ``x: [m, G, D]`` -> ``[m]`` int64 in [0, 2^b - 1]
        (None when symmetric: no offset grid).

        ``round(maxq * -min / (max - min))``: it does not change when the range
        is shrunk by the clip search, so it needs no scale.
        """
        if self.symmetric:
            return None
        lo, hi = self._ranges(x)
        span = hi - lo
        z = torch.where(span > 0, -lo * self.maxq / torch.where(span > 0, span, torch.ones_like(span)), 0.0)
        return torch.round(z).clamp(0, self.maxq).to(torch.int64)

    def _step(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        return fp16_exact((hi - lo) / self.maxq).clamp(min=FP16_TINY)

    def group_scales(self, x: torch.Tensor) -> torch.Tensor:
        """Step of each group ``x: [m, G, D]`` -> ``[m]`` (fp16-exact, > 0)."""
        lo, hi = self._ranges(x)
        step = self._step(lo, hi)
        if not self.mse_clip:
            return step
        flat = x.float().reshape(x.shape[0], -1)
        zp = self.group_zero_points(x)
        zero = torch.zeros(x.shape[0], 1, device=x.device) if zp is None else zp.float().unsqueeze(1)
        best_err = torch.full_like(step, math.inf)
        best = step.clone()
        for i in range(int(self.max_shrink * self.clip_grid) + 1):
            p = 1.0 - i / self.clip_grid
            s = self._step(p * lo, p * hi).unsqueeze(1)
            err = (self._fake_quant(flat, s, zero) - flat).pow(2).sum(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, s.squeeze(1), best)
        return best

    def _offset(self, zero: torch.Tensor) -> torch.Tensor:
        """Code of value 0 per row: the zero point, or (2^b - 1)/2 (midrise)."""
        return torch.full_like(zero, self.maxq / 2.0) if self.symmetric else zero

    def _quant(self, x: torch.Tensor, s: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        off = self._offset(zero)
        if self.symmetric:  # midrise: levels at half-integers of the step
            return torch.floor(x / s + off + 0.5).clamp(0, self.maxq)  # off = maxq/2
        return torch.round(x / s + off).clamp(0, self.maxq)

    def _fake_quant(self, x: torch.Tensor, s: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        return s * (self._quant(x, s, zero) - self._offset(zero))

    # -- codec
    def encode(self, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None = None) -> Codes:
        """Codes ``q: [n, D]`` (and per-vector ``zero: [n]`` when asymmetric).

        ``zero`` ([n] int): the groups' zero points; computed from ``x`` when
        omitted, which needs the rows to be whole consecutive groups.
        """
        check_vectors(x, self.dim)
        n = x.shape[0]
        _check_scale(scale, n)
        xf = x.float()
        s = _safe(scale.to(x.device))
        if self.symmetric:
            z = torch.zeros(n, 1, device=x.device)
        else:
            if zero is None:
                g = self.group_size
                if n % g:
                    raise CodecError(
                        f"asymmetric uniform encode got {n} vectors, not whole groups of {g}: "
                        "pass zero= (per vector, from group_zero_points on the whole groups)"
                    )
                zero = self.group_zero_points(xf.view(n // g, g, self.dim)).repeat_interleave(g)
            zero = zero.reshape(-1).to(device=x.device, dtype=torch.int64)
            if zero.shape[0] != n:
                raise CodecError(f"need one zero point per vector ({n}), got {zero.shape[0]}")
            z = zero.float().unsqueeze(1)
        q = self._quant(xf, s, z).to(torch.int64)
        codes: Codes = {"q": q}
        if not self.symmetric:
            codes["zero"] = zero
        return codes

    def decode(self, codes: Codes, scale: torch.Tensor) -> torch.Tensor:
        q = codes["q"]
        s = scale.float().to(q.device).reshape(-1, 1)
        if self.symmetric:
            off = self.maxq / 2.0
        else:
            off = codes["zero"].to(q.device).float().unsqueeze(1)
        return s * (q.float() - off)

    def pack(self, codes: Codes) -> dict[str, torch.Tensor]:
        out = {"q": pack_bits(codes["q"], self.bits)}
        if not self.symmetric:
            zero = codes["zero"].reshape(-1)
            g = self.group_size
            if zero.shape[0] % g:
                raise CodecError(f"pack needs whole groups of {g} vectors, got {zero.shape[0]}")
            per_group = zero.view(-1, g)
            if not (per_group == per_group[:, :1]).all():
                raise CodecError("zero points differ inside a group; encode each group with one zero point")
            out["zero"] = pack_bits(per_group[:, 0], self.bits)
        return out

    def unpack(self, stored: dict[str, torch.Tensor], n: int) -> Codes:
        codes = super().unpack(stored, n)
        if not self.symmetric:
            g = self.group_size
            if n % g:
                raise CodecError(f"unpack needs whole groups of {g} vectors, got {n}")
            codes["zero"] = unpack_bits(stored["zero"], self.bits, n // g).repeat_interleave(g)
        return codes

    def nominal_bits_per_weight(self) -> float:
        zp = 0.0 if self.symmetric else self.bits / self.group_weights
        return self.bits + 16.0 / self.group_weights + zp

    def describe(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        clip = ", mse-clip" if self.mse_clip else ""
        return f"uniform(b={self.bits}, {kind}{clip}, D={self.dim}, group={self.group_weights} weights)"


def uniform_reference(x: torch.Tensor, step: float, zero: int | None, bits: int) -> torch.Tensor:
    """Plain reference of uniform RTN codes for one group (Python floats).

    ``zero=None`` means symmetric midrise. Ties round half to even like torch.
    """
    maxq = (1 << bits) - 1
    out = []
    for v in x.reshape(-1).tolist():
        if zero is None:
            q = math.floor(v / step + maxq / 2.0 + 0.5)
        else:
            q = round(v / step + zero)  # Python round: half to even
        out.append(min(max(q, 0), maxq))
    return torch.tensor(out, dtype=torch.int64).view(x.shape)


# ---------------------------------------------------------------- NF and Lloyd-Max codecs


class NormalFloatCodec(_TableCodec):
    """QLoRA NormalFloat levels times the group absmax (fp16). ``bits`` in [2, 8]."""

    name: ClassVar[str] = "nf4"

    def __init__(self, bits: int = 4, dim: int = 1, group_weights: int = 64) -> None:
        if not isinstance(bits, int) or not 2 <= bits <= 8:
            raise CodecError(f"nf4 needs bits in [2, 8] (NormalFloat has no 1-bit form), got {bits!r}")
        self._setup(bits, dim, group_weights)
        self._set_levels(nf_levels(bits))

    def group_scales(self, x: torch.Tensor) -> torch.Tensor:
        """Absmax of each group ``x: [m, G, D]`` -> ``[m]`` (fp16-exact)."""
        return fp16_exact(x.float().reshape(x.shape[0], -1).abs().amax(dim=1))

    def describe(self) -> str:
        return f"nf{self.bits}(D={self.dim}, block={self.group_weights} weights)"


class LloydMaxCodec(_TableCodec):
    """Gaussian Lloyd-Max levels times the group RMS (fp16)."""

    name: ClassVar[str] = "lloydmax"

    def __init__(self, bits: int, dim: int = 1, group_weights: int = 128) -> None:
        self._setup(bits, dim, group_weights)
        self._set_levels(gaussian_lloyd_max(bits).levels)

    def group_scales(self, x: torch.Tensor) -> torch.Tensor:
        """RMS of each group ``x: [m, G, D]`` -> ``[m]`` (fp16-exact)."""
        return fp16_exact(x.float().reshape(x.shape[0], -1).pow(2).mean(dim=1).sqrt())


# ---------------------------------------------------------------- registry


@register_codec(
    "uniform", "round-to-nearest uniform levels, per-group step and zero point (RTN/GPTQ grid)", 1,
    options=(CodecOption("symmetric", bool, False, "uniform grid without zero point (midrise, +-absmax)"),),
)
def uniform_from_rate(bits: float, dim: int, **options) -> UniformCodec:
    """``uniform`` at ``round(bits)`` code bits; options: group_weights, symmetric, mse_clip, ..."""
    return UniformCodec(_code_bits(bits, "uniform"), dim, **options)


@register_codec("nf4", "QLoRA NormalFloat levels times block absmax (NF2..NF8, exact NF4 table)", 1)
def nf4_from_rate(bits: float, dim: int, **options) -> NormalFloatCodec:
    """``nf4`` at ``round(bits)`` code bits (2..8); options: group_weights (default 64)."""
    return NormalFloatCodec(_code_bits(bits, "nf4", lowest=2), dim, **options)


@register_codec("lloydmax", "Gaussian Lloyd-Max levels times group RMS", 1)
def lloydmax_from_rate(bits: float, dim: int, **options) -> LloydMaxCodec:
    """``lloydmax`` at ``round(bits)`` code bits; options: group_weights (default 128)."""
    return LloydMaxCodec(_code_bits(bits, "lloydmax"), dim, **options)
