"""Lattice quantizers: nearest points of Z^n, D_n, E_8, A_n, A_n*, and the E8 codec.

Nearest-point algorithms (Conway & Sloane, "Fast quantizing and decoding
algorithms for lattice quantizers and codes", IEEE Trans. IT 1982; SPLAG ch. 20),
vectorized over rows. Every function takes ``x: [m, d]`` and returns the lattice
points ``[m, d]`` in the same float dtype (float64 in, float64 out; fp16/bf16 are
computed in float32). Ties are broken arbitrarily (any nearest point is returned).

Coordinates:

* ``Z^n``, ``D_n`` (integer vectors of even sum), ``E_8 = D_8 u (D_8 + 1/2)``: in R^n.
* ``A_n = {y in Z^{n+1} : sum y = 0}`` and its dual
  ``A_n* = U_{i=0..n} (A_n + [i])``, ``[i] = ((i/(n+1))^(n+1-i), (-(n+1-i)/(n+1))^i)``,
  as vectors of the hyperplane ``sum = 0`` of R^{n+1}: inputs have ``n + 1`` columns and
  are first projected onto the hyperplane (which does not change which lattice point
  is nearest). To work in R^n, map with the orthonormal rows of
  :func:`hyperplane_basis`: ``y_Rn = nearest(x_Rn @ B) @ B.T``.

:func:`closest_point_enumeration` is the plain reference: it enumerates every lattice
point of a generator matrix inside a ball (integer coefficient boxes, level by level:
Fincke-Pohst) and is used by the tests against the fast algorithms.

The E8 codec (registered as ``e8``, dim 8) is a fixed-rate vector quantizer in the
spirit of QuIP#'s E8P; see :class:`E8Codebook16` for the 2-bit codebook and
:class:`E8Codec` for the residual stages at 3 and 4 bits per weight.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np
import torch

from .base import CodecError, Codes, VectorCodec, check_scales, check_vectors, fp16_exact, register_codec
from .packing import pack_bits, unpack_bits

# ================================================================ nearest points


def _as_work(x: torch.Tensor, cols: int | None, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise CodecError(f"{what} must be a 2-D tensor [m, d], got {getattr(x, 'shape', type(x))}")
    if cols is not None and x.shape[1] != cols:
        raise CodecError(f"{what} must have {cols} columns, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise CodecError(f"{what} must be a float tensor, got {x.dtype}")
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x


def zn_nearest(x: torch.Tensor) -> torch.Tensor:
    """Nearest point of Z^n to each row of ``x: [m, n]`` (coordinate-wise rounding)."""
    return torch.round(_as_work(x, None, "x"))


def _round_wrong_way(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``f`` with its worst-rounded coordinate per row rounded the other way (C&S's g(x))."""
    delta = x - f
    worst = delta.abs().argmax(dim=1, keepdim=True)
    step = torch.where(delta.gather(1, worst) >= 0, 1.0, -1.0).to(f.dtype)
    return f.scatter_add(1, worst, step)


def dn_nearest(x: torch.Tensor) -> torch.Tensor:
    """Nearest point of D_n (integer vectors with even sum) to each row of ``x: [m, n]``, n >= 2.

    Round every coordinate; if the sum is odd, round the worst coordinate the other way.
    """
    x = _as_work(x, None, "x")
    if x.shape[1] < 2:
        raise CodecError(f"D_n needs n >= 2 columns, got {x.shape[1]}")
    f = torch.round(x)
    odd = (f.sum(dim=1, keepdim=True).remainder(2) != 0)
    return torch.where(odd, _round_wrong_way(x, f), f)


def e8_nearest(x: torch.Tensor) -> torch.Tensor:
    """Nearest point of E_8 = D_8 u (D_8 + 1/2) to each row of ``x: [m, 8]``."""
    x = _as_work(x, 8, "x")
    y0 = dn_nearest(x)
    y1 = dn_nearest(x - 0.5) + 0.5
    d0 = ((x - y0) ** 2).sum(dim=1, keepdim=True)
    d1 = ((x - y1) ** 2).sum(dim=1, keepdim=True)
    return torch.where(d1 < d0, y1, y0)


def _check_an(x: torch.Tensor, what: str) -> tuple[torch.Tensor, int]:
    x = _as_work(x, None, what)
    n = x.shape[1] - 1
    if not 2 <= n <= 16:
        raise CodecError(f"A_n / A_n* take n + 1 columns with n in 2..16, got {x.shape[1]} columns")
    return x, n


def _an_nearest_projected(x: torch.Tensor) -> torch.Tensor:
    """A_n nearest point for rows already in the hyperplane sum = 0 (C&S 1982, sec. 3)."""
    f = torch.round(x)
    deficiency = f.sum(dim=1, keepdim=True)  # integer, |.| <= (n+1)/2
    delta = x - f
    # rank of each coordinate by delta, ascending (0 = most rounded up)
    rank = delta.argsort(dim=1).argsort(dim=1).to(x.dtype)
    cols = x.shape[1]
    down = (deficiency > 0) & (rank < deficiency)  # the Delta most rounded-up coordinates go down
    up = (deficiency < 0) & (rank >= cols + deficiency)  # the |Delta| most rounded-down go up
    return f - down.to(x.dtype) + up.to(x.dtype)


def an_nearest(x: torch.Tensor) -> torch.Tensor:
    """Nearest point of A_n to each row of ``x: [m, n+1]`` (hyperplane coordinates), n = 2..16.

    Rows are projected onto sum = 0 first; the result lies in Z^{n+1} with zero sum.
    """
    x, _ = _check_an(x, "x")
    x = x - x.mean(dim=1, keepdim=True)
    return _an_nearest_projected(x)


def an_star_glue(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Glue vectors ``[i]``, i = 0..n, of A_n* over A_n as rows ``[n+1, n+1]``."""
    rows = []
    for i in range(n + 1):
        j = n + 1 - i
        rows.append([i / (n + 1)] * j + [-j / (n + 1)] * i)
    return torch.tensor(rows, dtype=dtype)


def an_star_nearest(x: torch.Tensor) -> torch.Tensor:
    """Nearest point of A_n* to each row of ``x: [m, n+1]`` (hyperplane coordinates), n = 2..16.

    A_n* is the union of the n + 1 cosets A_n + [i]; the nearest point of each coset is
    found with :func:`an_nearest` and the closest of the n + 1 is kept.
    """
    x, n = _check_an(x, "x")
    x = x - x.mean(dim=1, keepdim=True)
    glue = an_star_glue(n, x.dtype).to(x.device)
    best = best_d = None
    for i in range(n + 1):
        y = _an_nearest_projected(x - glue[i]) + glue[i]
        d = ((x - y) ** 2).sum(dim=1, keepdim=True)
        if best is None:
            best, best_d = y, d
        else:
            closer = d < best_d
            best = torch.where(closer, y, best)
            best_d = torch.where(closer, d, best_d)
    return best


def hyperplane_basis(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Orthonormal basis ``B: [n, n+1]`` of the hyperplane sum = 0 of R^{n+1}.

    ``v @ B`` maps R^n into the hyperplane and ``y @ B.T`` maps it back (isometries), so
    A_n and A_n* can be used in R^n coordinates.
    """
    if not isinstance(n, int) or n < 1:
        raise CodecError(f"n must be an integer >= 1, got {n!r}")
    # Helmert basis: row k is (1, ..., 1, -k, 0, ...)/sqrt(k(k+1)) with k ones
    b = torch.zeros(n, n + 1, dtype=torch.float64)
    for k in range(1, n + 1):
        b[k - 1, :k] = 1.0
        b[k - 1, k] = -float(k)
        b[k - 1] /= math.sqrt(k * (k + 1))
    return b.to(dtype)


# ---------------------------------------------------------------- generators and membership


def lattice_generator(name: str, n: int = 8) -> torch.Tensor:
    """Generator matrix (rows = basis vectors, float64) of ``"Z"``, ``"D"``, ``"E8"``, ``"A"``, ``"A*"``.

    Z^n, D_n: ``[n, n]``; E8: ``[8, 8]`` (determinant 1); A_n, A_n*: ``[n, n+1]`` in
    hyperplane coordinates (Gram determinants n+1 and 1/(n+1)).
    """
    if name == "Z":
        return torch.eye(n, dtype=torch.float64)
    if name == "D":
        if n < 2:
            raise CodecError("D_n needs n >= 2")
        g = torch.zeros(n, n, dtype=torch.float64)
        g[0, 0] = g[0, 1] = -1.0
        for k in range(1, n):
            g[k, k - 1], g[k, k] = 1.0, -1.0
        return g
    if name == "E8":
        g = torch.zeros(8, 8, dtype=torch.float64)
        g[0, 0] = 2.0
        for k in range(1, 7):
            g[k, k - 1], g[k, k] = -1.0, 1.0
        g[7, :] = 0.5
        return g
    if name == "A":
        g = torch.zeros(n, n + 1, dtype=torch.float64)
        for k in range(n):
            g[k, k], g[k, k + 1] = 1.0, -1.0
        return g
    if name == "A*":
        # e_0 - e_k (k = 1..n-1) and the glue vector -[1] permuted: (-n, 1, ..., 1)/(n+1)
        g = torch.zeros(n, n + 1, dtype=torch.float64)
        for k in range(1, n):
            g[k - 1, 0], g[k - 1, k] = 1.0, -1.0
        g[n - 1, :] = 1.0 / (n + 1)
        g[n - 1, 0] = -n / (n + 1)
        return g
    raise CodecError(f"unknown lattice {name!r}; choose Z, D, E8, A or A*")


def _is_int(x: torch.Tensor, tol: float) -> torch.Tensor:
    return ((x - torch.round(x)).abs() <= tol).all(dim=1)


def is_lattice_point(name: str, y: torch.Tensor, tol: float = 1e-9) -> torch.Tensor:
    """Exact membership test (up to ``tol``) of each row of ``y`` in the named lattice -> bool ``[m]``."""
    y = y.double()
    if name == "Z":
        return _is_int(y, tol)
    if name == "D":
        return _is_int(y, tol) & (torch.round(y.sum(dim=1)).remainder(2) == 0)
    if name == "E8":
        even = torch.round(y.sum(dim=1)).remainder(2) == 0
        half = _is_int(y - 0.5, tol) & (torch.round((y - 0.5).sum(dim=1)).remainder(2) == 0)
        return (_is_int(y, tol) & even) | half
    zero_sum = y.sum(dim=1).abs() <= tol * y.shape[1]
    if name == "A":
        return _is_int(y, tol) & zero_sum
    if name == "A*":
        # all coordinates share one fractional part, a multiple of 1/(n+1)
        n1 = y.shape[1]
        frac = y - y[:, :1]
        return _is_int(frac, tol) & _is_int(y[:, :1] * n1, tol * n1) & zero_sum
    raise CodecError(f"unknown lattice {name!r}; choose Z, D, E8, A or A*")


def closest_point_enumeration(x: np.ndarray, generator: np.ndarray, radius: float) -> tuple[float, np.ndarray]:
    """Plain reference: the lattice point nearest ``x: [d]`` among those within ``radius``.

    Enumerates every integer coefficient vector ``u`` with ``|x - u G| <= radius`` (``G``
    ``[n, d]`` of full row rank; ``x`` is projected onto its row space): the last
    coefficient runs over the integer box allowed by the radius, then each earlier one
    over the box left by the choices made (Fincke-Pohst). The radius counts the distance
    of ``x`` to the row space too. Returns (squared distance, point); distance ``inf`` if
    no point lies within the radius.
    """
    g = np.asarray(generator, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    q, r = np.linalg.qr(g.T)  # G^T = Q R, R upper triangular [n, n]
    y = q.T @ x  # coordinates of the projection of x
    n = r.shape[0]
    best = [math.inf, None]
    u = np.zeros(n)
    # squared distance of x to the row space: lattice points cannot come closer than that
    r2 = radius * radius - max(float(x @ x - y @ y), 0.0)

    def level(k: int, partial: float) -> None:
        # partial = sum over levels > k of squared residuals
        centre_num = y[k] - r[k, k + 1 :] @ u[k + 1 :]
        rkk = r[k, k]
        room = r2 - partial
        if room < 0:
            return
        half = math.sqrt(room) / abs(rkk)
        c = centre_num / rkk
        for v in range(math.ceil(c - half - 1e-12), math.floor(c + half + 1e-12) + 1):
            u[k] = v
            e = partial + (centre_num - rkk * v) ** 2
            if k == 0:
                if e < best[0]:
                    best[0], best[1] = e, u.copy()
            else:
                level(k - 1, e)
        u[k] = 0

    level(n - 1, 0.0)
    if best[1] is None:
        return math.inf, np.full(g.shape[1], np.nan)
    point = best[1] @ g
    return float(((x - point) ** 2).sum()), point


# ================================================================ E8 codebooks

_HALF_VALUES = (0.5, 1.5, 2.5, 3.5)


@lru_cache(maxsize=None)
def _abs_patterns_by_norm(max_norm2: float) -> tuple[tuple[float, ...], ...]:
    """All vectors of {1/2, 3/2, 5/2, 7/2}^8 with squared norm <= max_norm2, sorted by (norm, lexicographic)."""
    pats = [p for p in itertools.product(_HALF_VALUES, repeat=8) if sum(v * v for v in p) <= max_norm2 + 1e-9]
    pats.sort(key=lambda p: (sum(v * v for v in p), p))
    return tuple(pats)


def _e8_2bit_patterns() -> torch.Tensor:
    """The 256 absolute-value patterns of :class:`E8Codebook16`, ``[256, 8]`` float64.

    All 227 vectors of {1/2, 3/2, 5/2}^8 with squared norm <= 10 (sorted by norm, then
    lexicographically), then 29 of the 224 with squared norm 12, taken evenly spaced in
    lexicographic order (positions floor(k * 224 / 29), k = 0..28) so that no coordinate
    is favoured much. Measured on Gaussian data, this choice and random choices of the 29
    give the same MSE (0.0910-0.0911 at the best scale); lexicographically first 29: 0.0914.
    """
    pats = _abs_patterns_by_norm(12.0)
    inner = [p for p in pats if sum(v * v for v in p) <= 10 + 1e-9]
    shell = [p for p in pats if abs(sum(v * v for v in p) - 12) < 1e-9]
    assert len(inner) == 227 and len(shell) == 224
    chosen = inner + [shell[k * len(shell) // 29] for k in range(29)]
    return torch.tensor(chosen, dtype=torch.float64)


class E8Codebook16:
    """2^16 points of the shifted lattice E8 + 1/4 (2 bits per weight in 8 dims).

    Codewords are ``c = s * a + t / 4`` (elementwise), with

    * ``a`` one of 256 absolute-value patterns (:func:`_e8_2bit_patterns`): points of
      (Z + 1/2)^8 of smallest norm,
    * ``s`` in {-1, +1}^8 with an even sum ``sum(s * a)`` (so ``s * a`` lies in
      D8 + 1/2, the half-integer half of E8): 7 free signs, the 8th follows from parity,
    * ``t`` in {+1, -1}: ``s * a + 1/4`` lies in E8 + 1/4, and so does ``s * a - 1/4``
      (as ``D8 + 1/2 - 1/2 = D8``).

    The 2^16 codewords are distinct. Code layout (16 bits): bits 0..6 the signs of
    coordinates 0..6 (1 = negative), bits 7..14 the pattern index, bit 15 the shift
    (0: +1/4, 1: -1/4). Decoding needs only the 256 x 8 pattern table.

    Encoding is exact nearest-codeword search by structure: for each shift and pattern the
    best signs are those of ``z = y - t/4``, and if their parity is wrong the cheapest single
    sign flip (smallest ``a_i |z_i|``) fixes it; so the best codeword of each of the
    512 (shift, pattern) pairs costs one 8 x 256 matrix product plus a min, instead of a
    search over 2^16 codewords (:meth:`encode_reference`).
    """

    bits = 16
    sign_bits = 7

    def __init__(self) -> None:
        self.patterns = _e8_2bit_patterns()  # [256, 8]
        # required parity of the number of negative signs: sum(s*a) even <=> #neg = sum(a - 1/2) mod 2
        self.parity = torch.round((self.patterns - 0.5).sum(dim=1)).long().remainder(2)  # [256]
        self.norm2 = (self.patterns**2).sum(dim=1)  # [256]

    # ------------------------------------------------------------ decode

    def decode(self, codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Codewords ``[n, 8]`` of int64 codes ``[n]`` in [0, 2^16)."""
        codes = codes.long()
        pat_idx = (codes >> 7) & 255
        shift = torch.where((codes >> 15) & 1 == 1, -0.25, 0.25).to(dtype)
        bitpos = torch.arange(7, device=codes.device)
        neg7 = (codes.unsqueeze(1) >> bitpos) & 1  # [n, 7]
        parity = self.parity.to(codes.device)[pat_idx]
        neg_last = (parity - neg7.sum(dim=1)).remainder(2)
        neg = torch.cat([neg7, neg_last.unsqueeze(1)], dim=1)
        signs = (1 - 2 * neg).to(dtype)
        return signs * self.patterns.to(device=codes.device, dtype=dtype)[pat_idx] + shift.unsqueeze(1)

    def codewords(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """All 2^16 codewords ``[65536, 8]``, row ``i`` = ``decode(i)``."""
        return self.decode(torch.arange(1 << 16), dtype)

    # ------------------------------------------------------------ encode

    def encode(self, y: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Code ``[n]`` (int64) of the codeword nearest to each row of ``y: [n, 8]``."""
        work = torch.float64 if y.dtype == torch.float64 else torch.float32
        y = y.to(work)
        pats = self.patterns.to(device=y.device, dtype=work)
        parity = self.parity.to(y.device)
        norm2 = self.norm2.to(device=y.device, dtype=work)
        pats_t = pats.T.contiguous()  # [8, 256]
        out = torch.empty(y.shape[0], dtype=torch.int64, device=y.device)
        bitpos = torch.arange(7, device=y.device)
        for start in range(0, y.shape[0], chunk):
            yc = y[start : start + chunk]
            best_score = best_pat = best_shift = None
            for shift_bit, t in ((0, 0.25), (1, -0.25)):
                z = yc - t
                az = z.abs()
                neg_parity = (z < 0).sum(dim=1).remainder(2)  # [c]
                # |z - s*a|^2 - |z|^2 with signs of z: |a|^2 - 2 a.|z|
                score = norm2.unsqueeze(0) - 2.0 * az @ pats.T  # [c, 256]
                # cheapest single flip per pattern: min_i a_i |z_i|, [c, 256]
                flip_cost = az[:, :1] * pats_t[0]
                for i in range(1, 8):
                    flip_cost = torch.minimum(flip_cost, az[:, i : i + 1] * pats_t[i])
                wrong = neg_parity.unsqueeze(1) != parity.unsqueeze(0)
                score = score + 4.0 * flip_cost * wrong + (z * z).sum(dim=1, keepdim=True)
                s, p = score.min(dim=1)
                if best_score is None:
                    best_score, best_pat = s, p
                    best_shift = torch.zeros_like(p)
                else:
                    better = s < best_score
                    best_score = torch.where(better, s, best_score)
                    best_pat = torch.where(better, p, best_pat)
                    best_shift = torch.where(better, torch.ones_like(p), best_shift)
            t = torch.where(best_shift == 1, -0.25, 0.25).to(work).unsqueeze(1)
            z = yc - t
            a = pats[best_pat]  # [c, 8]
            neg = (z < 0).long()
            wrong = neg.sum(dim=1).remainder(2) != parity[best_pat]
            flip = (z.abs() * a).argmin(dim=1)
            neg = torch.where(
                wrong.unsqueeze(1) & (torch.arange(8, device=y.device) == flip.unsqueeze(1)), 1 - neg, neg
            )
            sign_code = (neg[:, :7] << bitpos).sum(dim=1)
            out[start : start + chunk] = sign_code | (best_pat << 7) | (best_shift << 15)
        return out

    def encode_reference(self, y: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """Plain reference of :meth:`encode`: brute-force search over all 2^16 codewords."""
        work = torch.float64 if y.dtype == torch.float64 else torch.float32
        cw = self.codewords(work).to(y.device)
        half_norm = 0.5 * (cw**2).sum(dim=1)
        out = torch.empty(y.shape[0], dtype=torch.int64, device=y.device)
        for start in range(0, y.shape[0], chunk):
            yc = y[start : start + chunk].to(work)
            out[start : start + chunk] = (half_norm - yc @ cw.T).argmin(dim=1)
        return out


class E8Codebook8:
    """2^8 points of E8 (1 bit per weight in 8 dims), used as a residual stage.

    The 240 roots of E8 (squared norm 2: all permutations of (+-1, +-1, 0^6) and
    (+-1/2)^8 with an even number of minus signs), then the 16 points +-2 e_i (squared
    norm 4); the set is symmetric under sign changes and permutations of coordinates.
    Code = row index of :attr:`points` (sorted lexicographically within each shell).
    Encoding is a search over the 256 points (one matrix product).
    """

    bits = 8

    def __init__(self) -> None:
        roots = []
        for i, j in itertools.combinations(range(8), 2):
            for si, sj in itertools.product((1.0, -1.0), repeat=2):
                v = [0.0] * 8
                v[i], v[j] = si, sj
                roots.append(tuple(v))
        for signs in itertools.product((0.5, -0.5), repeat=8):
            if sum(s < 0 for s in signs) % 2 == 0:
                roots.append(signs)
        outer = []
        for i in range(8):
            for s in (2.0, -2.0):
                v = [0.0] * 8
                v[i] = s
                outer.append(tuple(v))
        assert len(roots) == 240 and len(outer) == 16
        self.points = torch.tensor(sorted(roots) + sorted(outer), dtype=torch.float64)  # [256, 8]

    def decode(self, codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Points ``[n, 8]`` of int64 codes ``[n]`` in [0, 256)."""
        return self.points.to(device=codes.device, dtype=dtype)[codes.long()]

    def codewords(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return self.points.to(dtype)

    def encode(self, y: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """Code ``[n]`` of the point nearest to each row of ``y: [n, 8]``."""
        work = torch.float64 if y.dtype == torch.float64 else torch.float32
        pts = self.points.to(device=y.device, dtype=work)
        half_norm = 0.5 * (pts**2).sum(dim=1)
        out = torch.empty(y.shape[0], dtype=torch.int64, device=y.device)
        for start in range(0, y.shape[0], chunk):
            out[start : start + chunk] = (half_norm - y[start : start + chunk].to(work) @ pts.T).argmin(dim=1)
        return out

    def encode_reference(self, y: torch.Tensor) -> torch.Tensor:
        """Plain per-vector reference of :meth:`encode`."""
        pts = self.points.tolist()
        out = []
        for row in y.double().tolist():
            d = [sum((r - p) ** 2 for r, p in zip(row, pt)) for pt in pts]
            out.append(min(range(len(pts)), key=d.__getitem__))
        return torch.tensor(out, dtype=torch.int64)


@lru_cache(maxsize=None)
def e8_codebook16() -> E8Codebook16:
    """The shared :class:`E8Codebook16` (tables are built once)."""
    return E8Codebook16()


@lru_cache(maxsize=None)
def e8_codebook8() -> E8Codebook8:
    """The shared :class:`E8Codebook8`."""
    return E8Codebook8()


# ================================================================ the e8 codec

# Tuned once on i.i.d. unit Gaussian data (2^16 vectors, seed 0, groups of 32 vectors):
# scale = RMS(group) * factor, and residual stage k quantizes (residual / scale) / gain_k.
# (code bits per weight) -> (scale factor, stage layout, residual gain)
_E8_SETTINGS: dict[int, tuple[float, tuple[str, ...], float]] = {
    2: (0.96, ("e8p16",), 1.0),  # MSE 0.0904 (factor 0.93..0.99 all within 0.0908)
    3: (1.00, ("e8p16", "e8r8"), 0.50),  # MSE 0.0291 (grid 0.9..1.2 x 0.3..0.7)
    4: (1.10, ("e8p16", "e8p16"), 0.26),  # MSE 0.0082 (grid 1.0..1.16 x 0.22..0.34)
}
_STAGE_BOOKS = {"e8p16": e8_codebook16, "e8r8": e8_codebook8}


class E8Codec(VectorCodec):
    """E8 lattice codec for 8-dim vectors at 2, 3 or 4 code bits per weight.

    * 2 bits: one 16-bit code per vector, :class:`E8Codebook16` (2^16 points of E8 + 1/4).
    * 3 bits: then an 8-bit :class:`E8Codebook8` code for the scaled residual.
    * 4 bits: then a second 16-bit :class:`E8Codebook16` code for the scaled residual.

    Each group of ``group_size`` vectors shares one fp16 scale ``RMS(group) * scale_factor``;
    vector ``x`` is coded as ``scale * sum_k g_k c_k`` with ``g_0 = 1`` and
    ``g_k = residual_gain^k``; stages are chosen greedily (stage k is the nearest codeword to
    the residual left by stages < k, divided by ``g_k``). Stored: the codes of each stage,
    packed at their bit widths; the codebooks are fixed by construction and not stored.
    """

    name = "e8"

    def __init__(
        self,
        code_bits: int = 2,
        group_size: int = 32,
        scale_factor: float | None = None,
        residual_gain: float | None = None,
    ) -> None:
        if code_bits not in _E8_SETTINGS:
            raise CodecError(f"e8 code_bits must be one of {sorted(_E8_SETTINGS)}, got {code_bits!r}")
        if not isinstance(group_size, int) or group_size < 1:
            raise CodecError(f"group_size (vectors per scale) must be an integer >= 1, got {group_size!r}")
        factor, layout, gain = _E8_SETTINGS[code_bits]
        scale_factor = factor if scale_factor is None else scale_factor
        residual_gain = gain if residual_gain is None else residual_gain
        for label, v in (("scale_factor", scale_factor), ("residual_gain", residual_gain)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise CodecError(f"{label} must be a positive finite number, got {v!r}")
        self.dim = 8
        self.code_bits = code_bits
        self.group_size = group_size
        self.scale_factor = float(scale_factor)
        self.residual_gain = float(residual_gain)
        self.layout = layout
        self.books = [_STAGE_BOOKS[s]() for s in layout]
        self.gains = [self.residual_gain**k for k in range(len(layout))]

    def config(self) -> dict:
        return {
            "code_bits": self.code_bits,
            "group_size": self.group_size,
            "scale_factor": self.scale_factor,
            "residual_gain": self.residual_gain,
        }

    def describe(self) -> str:
        return f"e8(bits={self.code_bits}, stages={'+'.join(self.layout)}, G={self.group_size})"

    def nominal_bits_per_weight(self) -> float:
        return sum(b.bits for b in self.books) / 8 + 16 / (8 * self.group_size)

    def group_scales(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[2] != 8:
            raise CodecError(f"group_scales takes [m, G, 8], got {tuple(x.shape)}")
        rms = x.float().pow(2).mean(dim=(1, 2)).sqrt()
        return fp16_exact(rms * self.scale_factor)

    def _inverse_scale(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        check_scales(scale, x.shape[0])
        s = scale.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        return torch.where(s > 0, 1.0 / s.clamp_min(torch.finfo(s.dtype).tiny), torch.zeros_like(s))

    def encode(self, x: torch.Tensor, scale: torch.Tensor) -> Codes:
        check_vectors(x, 8)
        inv = self._inverse_scale(x, scale)
        work = inv.dtype
        residual = x.to(work) * inv.unsqueeze(1)
        codes: Codes = {}
        for k, (book, g) in enumerate(zip(self.books, self.gains)):
            c = book.encode(residual / g)
            codes[f"stage{k}"] = c
            residual = residual - g * book.decode(c, work)
        return codes

    def decode(self, codes: Codes, scale: torch.Tensor) -> torch.Tensor:
        self._check_codes(codes)
        out = None
        for k, (book, g) in enumerate(zip(self.books, self.gains)):
            part = g * book.decode(codes[f"stage{k}"], torch.float32)
            out = part if out is None else out + part
        check_scales(scale, out.shape[0], encoding=False)
        return out * scale.float().unsqueeze(1)

    def _check_codes(self, codes: Codes) -> None:
        want = {f"stage{k}" for k in range(len(self.books))}
        if set(codes) != want:
            raise CodecError(f"e8 codes must have keys {sorted(want)}, got {sorted(codes)}")

    def pack(self, codes: Codes) -> dict[str, torch.Tensor]:
        self._check_codes(codes)
        return {f"stage{k}": pack_bits(codes[f"stage{k}"], b.bits) for k, b in enumerate(self.books)}

    def unpack(self, stored: dict[str, torch.Tensor], n: int) -> Codes:
        missing = [f"stage{k}" for k in range(len(self.books)) if f"stage{k}" not in stored]
        if missing:
            raise CodecError(f"the stored e8 codes lack {missing}")
        return {f"stage{k}": unpack_bits(stored[f"stage{k}"], b.bits, n) for k, b in enumerate(self.books)}


@register_codec(
    "e8",
    "E8 lattice codebook (QuIP#-E8P-like, 2^16 points of E8+1/4) with residual stages; 2/3/4 bits",
    default_dim=8,
    dims=(8,),
)
def e8_from_rate(bits: float, dim: int = 8, group_size: int = 32, **options) -> E8Codec:
    """The e8 codec whose rate (code bits + scale bits) is nearest ``bits`` (within 0.25 bpw)."""
    if dim != 8:
        raise CodecError(f"e8 works on vectors of 8 numbers, got dim={dim}")
    unknown = set(options) - {"scale_factor", "residual_gain"}
    if unknown:
        raise CodecError(f"unknown e8 option(s) {sorted(unknown)}; e8 takes group_size, scale_factor, residual_gain")
    candidates = [E8Codec(b, group_size, **options) for b in sorted(_E8_SETTINGS)]
    best = min(candidates, key=lambda c: abs(c.nominal_bits_per_weight() - bits))
    if abs(best.nominal_bits_per_weight() - bits) > 0.25:
        rates = ", ".join(f"{c.nominal_bits_per_weight():.4g}" for c in candidates)
        raise CodecError(
            f"e8 cannot reach {bits} bits per weight with group_size={group_size}; "
            f"it offers {rates} (2/3/4 code bits plus the fp16 scale per group)"
        )
    return best
