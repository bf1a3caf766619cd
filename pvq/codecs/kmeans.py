"""Weighted K-means and the K-means codebook codec (LLM-Codebook style).

:func:`weighted_kmeans` minimizes ``sum_i sum_d w_id (x_id - c_{a(i), d})^2``
with per-coordinate importances ``w`` (e.g. diag of the Hessian, or the OBS
saliency): weighted K-means++ seeding, assignment by matmuls in chunks,
weighted centroid update, empty clusters re-seeded at the worst-served point,
a fixed iteration budget and a seeded generator. It runs on ``x``'s device.

:class:`KMeansCodec` (registered as ``kmeans``) stores each vector of D
weights as the index of one of ``k = 2^p`` centroids (p bits per vector),
with a per-group RMS scale (fp16) and the fp16 codebook stored beside the
codes (it counts in the measured rate).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from .base import CodecError, CodecOption, Codes, VectorCodec, check_vectors, fp16_exact, register_codec
from .packing import pack_bits, unpack_bits

MAX_INDEX_BITS = 16
WEIGHTINGS = ("none", "hessian", "obs")
"""Per-coordinate importances a fit can ask a Hessian solver for (see ``pvq.solvers.importance``)."""


# ---------------------------------------------------------------- weighted K-means


def _check_inputs(x: torch.Tensor, k: int, weights: torch.Tensor | None) -> torch.Tensor:
    if x.dim() != 2 or not x.is_floating_point():
        raise CodecError(f"x must be a float tensor [n, D], got {tuple(x.shape)} {x.dtype}")
    if not isinstance(k, int) or k < 1:
        raise CodecError(f"k must be a positive integer, got {k!r}")
    if x.shape[0] < 1:
        raise CodecError("K-means needs at least one point")
    if not torch.isfinite(x).all():
        raise CodecError("x holds NaN or inf; clean the data before clustering")
    if weights is None:
        return torch.ones_like(x)
    if weights.shape != x.shape:
        raise CodecError(f"weights must have the shape of x {tuple(x.shape)}, got {tuple(weights.shape)}")
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise CodecError("weights must be finite and >= 0")
    return weights.to(dtype=x.dtype, device=x.device)


def weighted_distances(
    x: torch.Tensor, weights: torch.Tensor, centroids: torch.Tensor
) -> torch.Tensor:
    """``[n, k]`` weighted squared distances ``sum_d w_id (x_id - c_jd)^2`` by matmuls.

    Expanded as ``sum w x^2 - 2 (w x) c^T + w (c^2)^T``; clamped at 0.
    """
    wx = weights * x
    const = (wx * x).sum(dim=1, keepdim=True)
    return (const - 2.0 * wx @ centroids.T + weights @ (centroids * centroids).T).clamp_min(0.0)


def weighted_assign(
    x: torch.Tensor, weights: torch.Tensor, centroids: torch.Tensor, chunk_size: int = 1 << 14
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid under the weighted distance: ``(assignment [n] int64, distance [n])``.

    Works in chunks of ``chunk_size`` rows so that ``[chunk, k]`` fits in memory.
    The distance returned is recomputed directly (no cancellation).
    """
    n = x.shape[0]
    assign = torch.empty(n, dtype=torch.int64, device=x.device)
    # distance minus the per-row constant sum_d w x^2, as one matmul:
    # [w, w x] @ [c^2, -2 c]^T
    right = torch.cat([centroids * centroids, -2.0 * centroids], dim=1).T.contiguous()
    for start in range(0, n, chunk_size):
        sl = slice(start, min(start + chunk_size, n))
        left = torch.cat([weights[sl], weights[sl] * x[sl]], dim=1)
        assign[sl] = (left @ right).argmin(dim=1)
    dist = (weights * (x - centroids[assign]).pow(2)).sum(dim=1)
    return assign, dist


def weighted_assign_reference(
    x: torch.Tensor, weights: torch.Tensor, centroids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain loop reference of :func:`weighted_assign` (lowest index on ties)."""
    xs, ws, cs = x.tolist(), weights.tolist(), centroids.tolist()
    assign, dist = [], []
    for xi, wi in zip(xs, ws):
        best, bj = math.inf, 0
        for j, c in enumerate(cs):
            d = sum(w * (a - b) ** 2 for a, b, w in zip(xi, c, wi))
            if d < best:
                best, bj = d, j
        assign.append(bj)
        dist.append(best)
    return torch.tensor(assign, dtype=torch.int64), torch.tensor(dist, dtype=x.dtype)


def _sample(prob: torch.Tensor, generator: torch.Generator) -> int:
    """Index drawn with probability proportional to ``prob`` (>= 0), any length."""
    cum = torch.cumsum(prob.double(), dim=0)
    total = float(cum[-1])
    if not total > 0:
        return int(torch.randint(prob.shape[0], (1,), generator=generator, device=prob.device))
    r = torch.rand(1, generator=generator, device=prob.device, dtype=torch.float64) * total
    return int(torch.searchsorted(cum, r).clamp(max=prob.shape[0] - 1))


def _kmeanspp(x: torch.Tensor, w: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Weighted K-means++ seeds: first point by row weight, then by weighted distance."""
    n = x.shape[0]
    centroids = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    first = _sample(w.sum(dim=1), generator)
    centroids[0] = x[first]
    best = (w * (x - x[first]).pow(2)).sum(dim=1)
    for j in range(1, k):
        idx = _sample(best, generator) if n > 1 else 0
        centroids[j] = x[idx]
        best = torch.minimum(best, (w * (x - x[idx]).pow(2)).sum(dim=1))
    return centroids


def _update(
    x: torch.Tensor, w: torch.Tensor, assign: torch.Tensor, old: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted centroids ``sum w x / sum w`` per cluster and the cluster sizes."""
    k = old.shape[0]
    num = torch.zeros_like(old).index_add_(0, assign, w * x)
    den = torch.zeros_like(old).index_add_(0, assign, w)
    count = torch.bincount(assign, minlength=k)
    new = torch.where(den > 0, num / den.clamp_min(torch.finfo(x.dtype).tiny), old)
    return new, count


def weighted_kmeans(
    x: torch.Tensor,
    k: int,
    weights: torch.Tensor | None = None,
    iters: int = 30,
    seed: int = 0,
    init: str | torch.Tensor = "kmeans++",
    chunk_size: int = 1 << 14,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Weighted K-means of ``x: [n, D]`` into ``k`` centroids.

    ``weights: [n, D]`` (>= 0, default ones) weigh each coordinate's squared
    error. ``init``: "kmeans++" (weighted), "random" (k distinct points drawn
    uniformly) or a ``[k, D]`` tensor. At most ``iters`` Lloyd iterations
    (stops early once the assignment no longer changes). Deterministic for a
    given ``seed`` on a given device.

    Returns ``(centroids [k, D], assignment [n] int64, weighted error)`` where
    the error is ``sum_i sum_d w_id (x_id - c_{a(i), d})^2`` for the returned pair.
    """
    w = _check_inputs(x, k, weights)
    if not isinstance(iters, int) or iters < 0:
        raise CodecError(f"iters must be a non-negative integer, got {iters!r}")
    n = x.shape[0]
    generator = torch.Generator(device=x.device).manual_seed(int(seed))
    if isinstance(init, torch.Tensor):
        if init.shape != (k, x.shape[1]):
            raise CodecError(f"init centroids must have shape {(k, x.shape[1])}, got {tuple(init.shape)}")
        centroids = init.to(dtype=x.dtype, device=x.device).clone()
    elif init == "kmeans++":
        centroids = _kmeanspp(x, w, k, generator)
    elif init == "random":
        pick = torch.randperm(n, generator=generator, device=x.device)[:k]
        centroids = x[pick.repeat(-(-k // n))[:k] if n < k else pick].clone()
    else:
        raise CodecError(f"init must be 'kmeans++', 'random' or a [k, D] tensor, got {init!r}")

    assign, dist = weighted_assign(x, w, centroids, chunk_size)
    for _ in range(iters):
        centroids, count = _update(x, w, assign, centroids)
        empty = (count == 0).nonzero().flatten().tolist()
        if empty:  # re-seed each empty cluster at the currently worst-served point
            served = (w * (x - centroids[assign]).pow(2)).sum(dim=1)
            for j in empty:
                i = int(served.argmax())
                centroids[j] = x[i]
                served[i] = -1.0
        new_assign, dist = weighted_assign(x, w, centroids, chunk_size)
        changed = bool((new_assign != assign).any())
        assign = new_assign
        if not changed and not empty:
            break
    return centroids, assign, float(dist.double().sum())


# ---------------------------------------------------------------- codec


def index_bits_for(bits: float, dim: int) -> int:
    """Index bits per vector ``p = round(bits * dim)``; CodecError unless 1 <= p <= 16."""
    if not isinstance(dim, int) or dim < 1:
        raise CodecError(f"dim must be a positive integer, got {dim!r}")
    if not (isinstance(bits, (int, float)) and math.isfinite(bits) and bits > 0):
        raise CodecError(f"bits must be a positive number, got {bits!r}")
    p = int(math.floor(bits * dim + 0.5))
    if not 1 <= p <= MAX_INDEX_BITS:
        max_dim = max(1, int(MAX_INDEX_BITS / bits)) if bits <= MAX_INDEX_BITS else 0
        hint = (
            f"at {bits} bits per weight use dim <= {max_dim}" if max_dim else f"use bits <= {MAX_INDEX_BITS}"
        )
        raise CodecError(
            f"kmeans needs round(bits * dim) in [1, {MAX_INDEX_BITS}] index bits per vector "
            f"(a codebook of at most 2^{MAX_INDEX_BITS} centroids); bits={bits}, dim={dim} gives {p}. "
            f"At dim={dim} use bits in [{0.5 / dim:.3g}, {(MAX_INDEX_BITS + 0.49) / dim:.3g}); {hint}"
        )
    return p


class KMeansCodec(VectorCodec):
    """Codebook of ``2^index_bits`` centroids in D dimensions, per-group RMS scale.

    The codebook is fitted data: :meth:`fit` returns a codec carrying one
    (weighted K-means on ``x / scale``, rounded to fp16 since it is stored in
    fp16), :meth:`store` writes it beside the codes as ``"codebook"`` and
    :meth:`with_data` puts it back. ``codebook`` ([k, D]) passes one directly.
    Codes are ``{"index": [n]}``: nearest centroid of ``x / scale``.
    ``weighting`` names the per-coordinate importance a Hessian solver should
    give :meth:`fit` (``"hessian"``: diag H; ``"obs"``: w^2 / [H^-1]_ii;
    ``"none"``: plain K-means).
    """

    name: ClassVar[str] = "kmeans"

    def __init__(
        self,
        index_bits: int,
        dim: int = 4,
        group_weights: int = 128,
        *,
        codebook: torch.Tensor | None = None,
        iters: int = 30,
        seed: int = 0,
        init: str = "kmeans++",
        weighting: str = "hessian",
    ) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise CodecError(f"dim must be a positive integer, got {dim!r}")
        if not isinstance(index_bits, int) or not 1 <= index_bits <= MAX_INDEX_BITS:
            raise CodecError(f"index_bits must be an integer in [1, {MAX_INDEX_BITS}], got {index_bits!r}")
        if not isinstance(group_weights, int) or group_weights < dim or group_weights % dim:
            raise CodecError(f"group_weights={group_weights!r} must be a positive multiple of dim={dim}")
        if init not in ("kmeans++", "random"):
            raise CodecError(f"init must be 'kmeans++' or 'random', got {init!r}")
        if weighting not in WEIGHTINGS:
            raise CodecError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.weighting = weighting
        self.fit_importance = None if weighting == "none" else weighting
        self.dim = dim
        self.index_bits = index_bits
        self.num_centroids = 1 << index_bits
        self.group_weights = group_weights
        self.group_size = group_weights // dim
        self.iters = iters
        self.seed = seed
        self.init = init
        if codebook is not None:
            if codebook.shape != (self.num_centroids, dim):
                raise CodecError(
                    f"codebook must have shape {(self.num_centroids, dim)}, got {tuple(codebook.shape)}"
                )
            check_vectors(codebook, dim, "codebook")
            codebook = fp16_exact(codebook)
        self.codebook = codebook

    def config(self) -> dict:
        """Constructor arguments; the codebook is data (stored with the codes), not config."""
        return {
            "index_bits": self.index_bits,
            "dim": self.dim,
            "group_weights": self.group_weights,
            "iters": self.iters,
            "seed": self.seed,
            "init": self.init,
            "weighting": self.weighting,
        }

    def group_scales(self, x: torch.Tensor) -> torch.Tensor:
        """RMS of each group ``x: [m, G, D]`` -> ``[m]`` (fp16-exact)."""
        return fp16_exact(x.float().reshape(x.shape[0], -1).pow(2).mean(dim=1).sqrt())

    def fit_codebook(
        self, x: torch.Tensor, scale: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Weighted K-means codebook ``[k, D]`` (fp16-exact) of ``x / scale``.

        ``weights: [n, D]`` importances (in the units of x; scaling is folded in).
        """
        check_vectors(x, self.dim)
        u, w = self._normalized(x, scale, weights)
        centroids, _, _ = weighted_kmeans(u, self.num_centroids, w, self.iters, self.seed, self.init)
        return fp16_exact(centroids)

    def _normalized(
        self, x: torch.Tensor, scale: torch.Tensor, weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if scale.reshape(-1).shape[0] != x.shape[0]:
            raise CodecError(f"need one scale per vector ({x.shape[0]}), got {tuple(scale.shape)}")
        s = scale.float().to(x.device).reshape(-1, 1)
        s = torch.where(s > 0, s, torch.ones_like(s))
        u = x.float() / s
        if weights is None:
            return u, None
        if weights.shape != x.shape:
            raise CodecError(f"weights must have the shape of x {tuple(x.shape)}, got {tuple(weights.shape)}")
        return u, weights.float().to(x.device) * s * s  # error in x units: w s^2 (u - c)^2

    # -- fitted data
    @property
    def needs_fit(self) -> bool:
        return self.codebook is None

    def fit(
        self, x: torch.Tensor, scale: torch.Tensor, importance: torch.Tensor | None = None
    ) -> KMeansCodec:
        """This codec with the codebook fitted on ``x / scale`` (importances ``[n, D]`` optional)."""
        return KMeansCodec(**self.config(), codebook=self.fit_codebook(x, scale, importance))

    def data_tensors(self) -> dict[str, torch.Tensor]:
        if self.codebook is None:
            raise CodecError("this K-means codec has no codebook yet; call fit() first")
        return {"codebook": self.codebook.half()}

    def with_data(self, stored: dict[str, torch.Tensor]) -> KMeansCodec:
        if "codebook" not in stored:
            raise CodecError("the stored tensors lack the K-means 'codebook'")
        cb = stored["codebook"]
        if cb.shape != (self.num_centroids, self.dim):
            raise CodecError(f"stored codebook has shape {tuple(cb.shape)}, need {(self.num_centroids, self.dim)}")
        return KMeansCodec(**self.config(), codebook=cb.float())

    # -- codes
    def _codebook(self, device) -> torch.Tensor:
        if self.codebook is None:
            raise CodecError("this K-means codec has no codebook yet; call fit() (or pass codebook=) first")
        return self.codebook.to(device)

    def encode(self, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None = None) -> Codes:
        """``{"index": [n] int64}``: nearest centroid of ``x / scale``."""
        check_vectors(x, self.dim)
        codebook = self._codebook(x.device)
        u, _ = self._normalized(x, scale, None)
        index, _ = weighted_assign(u, torch.ones_like(u), codebook)
        return {"index": index}

    def decode(self, codes: Codes, scale: torch.Tensor) -> torch.Tensor:
        index = codes["index"]
        return self._codebook(index.device).float()[index] * scale.float().to(index.device).reshape(-1, 1)

    def pack(self, codes: Codes) -> dict[str, torch.Tensor]:
        return {"index": pack_bits(codes["index"], self.index_bits)}

    def unpack(self, stored: dict[str, torch.Tensor], n: int) -> Codes:
        return {"index": unpack_bits(stored["index"], self.index_bits, n)}

    def nominal_bits_per_weight(self) -> float:
        """Index and scale bits per weight; the codebook (16 k D bits) is shared and not included."""
        return self.index_bits / self.dim + 16.0 / self.group_weights

    def codebook_bits(self) -> int:
        """Bits the stored fp16 codebook takes (add to the codes to get the full rate)."""
        return 16 * self.num_centroids * self.dim

    def describe(self) -> str:
        fixed = ", fixed codebook" if self.codebook is not None else ""
        return f"kmeans(k=2^{self.index_bits}, D={self.dim}, group={self.group_weights} weights{fixed})"


@register_codec(
    "kmeans", "K-means codebook (weighted, fp16 codebook stored) with per-group RMS scale", 4,
    options=(CodecOption("weighting", str, "hessian",
                         "K-means importances: hessian (diag H), obs (w^2/[H^-1]_ii) or none (plain K-means)",
                         WEIGHTINGS),),
)
def kmeans_from_rate(bits: float, dim: int, **options) -> KMeansCodec:
    """``kmeans`` with ``2^round(bits * dim)`` centroids; options: group_weights, codebook, iters, seed."""
    return KMeansCodec(index_bits_for(bits, dim), dim, **options)
