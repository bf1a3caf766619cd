"""Nested-lattice (Voronoi) codes: Conway & Sloane, "A fast encoding method for lattice
codes and quantizers", IEEE Trans. IT 29 (1983).

A fine lattice ``L`` (Z^n, D_n, E_8 or A_n*, in R^n) shifted by a fixed offset ``a``,
scaled by a per-group step ``s`` (the stored fp16 scale), is shaped by the coarse lattice
``q L`` (``q >= 2`` any integer). The codebook is the ``q^n`` points of ``L + a`` inside the
Voronoi cell of ``q L``; a vector costs ``n log2 q`` bits, so the rate is ``log2 q`` bits per
weight plus the scale (q = 3, 5, 6, 7, ... give the rates in between the integers).

* Encode ``x: [N, n]``: ``y = nearest_L(x / s - a) + a`` (the fine nearest point); its
  coset ``y + q L`` is stored as the basis coordinates ``u = (y - a) B^-1 mod q``
  (``B`` the generator matrix, rows = basis vectors), digits in ``[0, q)``, packed by
  mixed radix (:func:`pvq.codecs.packing.pack_radix`: ``c`` digits per field of ``bit_length(q^c - 1)`` bits, c
  chosen for the least waste, e.g. 17 digits of radix 6 in 44 bits: 2.588 bits per digit).
* Decode: ``z = u B + a``, then ``c = z - q nearest_L(z / q)`` (the coset representative
  minus its nearest coarse-lattice point), which lies in the Voronoi cell of ``q L``;
  reconstruction ``s c``.

Ties on the cell boundary: ``a`` is chosen so that no point of ``L + a`` lies on the boundary
of the cell of ``q L`` (for Z^n: ``a = 1/2`` when q is even and 0 when q is odd, which makes
the code the symmetric uniform quantizer; for the others a tiny offset
``a_i = 2^-(9+i)`` whose inner products with the Voronoi-relevant vectors are all non-zero),
so the map from cosets to codewords is a bijection (tested exhaustively for small q, n).

Overload (``y`` outside the cell: the coset reduction would wrap it to the far side) is
handled in two ways. (1) The step is ``RMS(group) * step_factor * m``: ``step_factor`` is
tuned once per (lattice, n, q) for the least MSE on a seeded i.i.d. Gaussian sample
(cached; override with ``step_factor=``), and ``m`` is the multiplier from ``step_search``
(a tuple of candidates, default five from 0.88 to 1.12) with the least MSE on the group
itself. (2) A vector whose fine point falls outside the cell is re-encoded: for Z^n its
point is clamped coordinate-wise (the nearest codeword); for the other lattices ``x / s``
is shrunk radially by the factor ``t`` found by 12 bisection steps on [0, 1] (the largest
tried ``t`` whose fine point lies inside the cell; ``t = 0`` gives the point nearest ``a``,
always inside), so no vector wraps around.

``nearest_fine_reference`` / :meth:`VoronoiCodec.encode_reference` /
:func:`voronoi_codebook_reference` are the plain references (Fincke-Pohst enumeration and
Python loops) used by the tests.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from .base import (
    CodecError,
    CodecOption,
    Codes,
    VectorCodec,
    check_scales,
    check_vectors,
    fp16_exact,
    register_codec,
)
from .lattice import (
    an_star_nearest,
    closest_point_enumeration,
    dn_nearest,
    e8_nearest,
    hyperplane_basis,
    lattice_generator,
    zn_nearest,
)
from .packing import pack_radix, unpack_radix

OPTIONS = (
    CodecOption("lattice", str, "e8",
                "fine lattice of the Voronoi code: e8 (dim 8), dn (D_n, dim >= 2), an_star (A_n*, dim 2..16) "
                "or zn (Z^n, the uniform scalar quantizer)", ("e8", "dn", "an_star", "zn")),
)
LATTICES = OPTIONS[0].choices
DEFAULT_STEP_SEARCH = (0.88, 0.94, 1.0, 1.06, 1.12)
_SHRINK_STEPS = 12


# ================================================================ fine lattices in R^n


class FineLattice:
    """A lattice ``L`` of R^n with its generator, nearest-point map and boundary offset.

    ``basis``: ``[n, n]`` float64 generator (rows); ``nearest(x: [m, n]) -> [m, n]`` float64.
    """

    def __init__(self, name: str, n: int) -> None:
        if name not in LATTICES:
            raise CodecError(f"unknown lattice {name!r}; choose one of {', '.join(LATTICES)}")
        if not isinstance(n, int) or n < 1:
            raise CodecError(f"lattice dimension must be an integer >= 1, got {n!r}")
        if name == "e8" and n != 8:
            raise CodecError(f"the e8 lattice works on dim=8, got dim={n}; use dn or an_star for other dims")
        if name == "dn" and n < 2:
            raise CodecError(f"D_n needs dim >= 2, got dim={n}; use zn for dim 1")
        if name == "an_star" and not 2 <= n <= 16:
            raise CodecError(f"A_n* works on dim 2..16, got dim={n}")
        self.name, self.n = name, n
        if name == "zn":
            self.basis = lattice_generator("Z", n)
        elif name == "dn":
            self.basis = lattice_generator("D", n)
        elif name == "e8":
            self.basis = lattice_generator("E8")
        else:
            self.hyper = hyperplane_basis(n)  # [n, n+1], orthonormal rows
            self.basis = lattice_generator("A*", n) @ self.hyper.T
        self.basis_inv = torch.linalg.inv(self.basis)
        self.det = float(abs(torch.linalg.det(self.basis)))

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest lattice point to each row of ``x: [m, n]`` (float64)."""
        x = x.double()
        if self.name == "zn":
            return zn_nearest(x)
        if self.name == "dn":
            return dn_nearest(x)
        if self.name == "e8":
            return e8_nearest(x)
        return an_star_nearest(x @ self.hyper) @ self.hyper.T

    def offset(self, q: int) -> torch.Tensor:
        """The shift ``a: [n]`` of the codebook (no point of ``L + a`` on the cell boundary of ``qL``)."""
        if self.name == "zn":
            return torch.full((self.n,), 0.5 if q % 2 == 0 else 0.0, dtype=torch.float64)
        small = torch.tensor([2.0 ** -(9 + i) for i in range(self.n + (self.name == "an_star"))],
                             dtype=torch.float64)
        if self.name == "an_star":  # generic in hyperplane coordinates (subset sums non-zero)
            return (small - small.mean()) @ self.hyper.T
        return small

    def coords(self, y: torch.Tensor) -> torch.Tensor:
        """Integer basis coordinates ``[m, n]`` int64 of lattice points ``y: [m, n]``."""
        return torch.round(y.double() @ self.basis_inv).to(torch.int64)


@lru_cache(maxsize=None)
def fine_lattice(name: str, n: int) -> FineLattice:
    """The shared :class:`FineLattice` (tables built once)."""
    return FineLattice(name, n)


def nearest_fine_reference(lat: FineLattice, x: np.ndarray) -> np.ndarray:
    """Plain reference: the nearest point of ``lat`` to ``x: [n]`` by Fincke-Pohst enumeration."""
    x = np.asarray(x, dtype=np.float64)
    gen = lat.basis.numpy()
    radius = 1.0
    while True:
        d, point = closest_point_enumeration(x, gen, radius)
        if math.isfinite(d):
            return point
        radius *= 2.0


# ================================================================ the codec


class VoronoiCodec(VectorCodec):
    """Voronoi code of ``lattice`` (e8 | dn | an_star | zn) shaped by ``q L``; see the module docs.

    Codes ``{"coset": [N, dim] int64}``, digits in ``[0, q)``; stored packed by mixed radix
    (``dim * N`` digits); the fp16 group scale is the step.
    """

    name = "lattice"

    def __init__(
        self,
        lattice: str = "e8",
        dim: int = 8,
        q: int = 4,
        group_size: int = 32,
        step_factor: float | None = None,
        step_search: tuple[float, ...] | list[float] | None = DEFAULT_STEP_SEARCH,
    ) -> None:
        if not isinstance(q, int) or q < 2:
            raise CodecError(f"q (points per dimension of the coarse lattice qL) must be an integer >= 2, got {q!r}")
        if q > 1 << 20:
            raise CodecError(f"q={q} is too large (more than 20 bits per dimension); lower the rate")
        if not isinstance(group_size, int) or group_size < 1:
            raise CodecError(f"group_size (vectors per scale) must be an integer >= 1, got {group_size!r}")
        self.lat = fine_lattice(lattice, dim)
        self.lattice, self.dim, self.q, self.group_size = lattice, dim, q, group_size
        self.a = self.lat.offset(q)
        if step_factor is None:
            step_factor = tuned_step_factor(lattice, dim, q)
        if not (isinstance(step_factor, (int, float)) and math.isfinite(step_factor) and step_factor > 0):
            raise CodecError(f"step_factor must be a positive finite number, got {step_factor!r}")
        self.step_factor = float(step_factor)
        search = (1.0,) if not step_search else tuple(float(m) for m in step_search)
        if any(not (math.isfinite(m) and m > 0) for m in search):
            raise CodecError(f"step_search must hold positive multipliers, got {step_search!r}")
        self.step_search = search

    def config(self) -> dict:
        return {
            "lattice": self.lattice,
            "dim": self.dim,
            "q": self.q,
            "group_size": self.group_size,
            "step_factor": self.step_factor,
            "step_search": list(self.step_search),
        }

    def describe(self) -> str:
        return f"lattice({self.lattice}, q={self.q}, D={self.dim}, G={self.group_size})"

    def nominal_bits_per_weight(self) -> float:
        return math.log2(self.q) + 16.0 / (self.dim * self.group_size)

    # ------------------------------------------------------------ lattice maps (unit step)

    def _fine(self, u: torch.Tensor) -> torch.Tensor:
        """Nearest point of ``L + a`` to rows of ``u`` (float64)."""
        return self.lat.nearest(u - self.a) + self.a

    def _digits(self, y: torch.Tensor) -> torch.Tensor:
        return self.lat.coords(y - self.a).remainder(self.q)

    def _codeword(self, digits: torch.Tensor) -> torch.Tensor:
        """Codeword in the cell of ``qL`` of coset digits ``[m, n]`` (float64)."""
        z = digits.double() @ self.lat.basis + self.a
        return z - self.q * self.lat.nearest(z / self.q)

    def _encode_unit(self, u: torch.Tensor) -> torch.Tensor:
        """Coset digits of ``u: [m, n]`` (already divided by the step), overload handled."""
        y = self._fine(u)
        if self.lattice == "zn":
            half = (self.q - 1) / 2.0
            return self._digits(y.clamp(-half, half))
        digits = self._digits(y)
        over = self._outside(digits, y)
        if not over.any():
            return digits
        # bisection on the radial factor t: lo = 0 is inside (the point nearest a), hi = 1 outside
        idx = over.nonzero().squeeze(1)
        ui = u[idx]
        lo = torch.zeros(idx.shape[0], 1, dtype=torch.float64)
        hi = torch.ones_like(lo)
        best = self._digits(self._fine(ui * 0.0))
        for _ in range(_SHRINK_STEPS):
            mid = 0.5 * (lo + hi)
            ym = self._fine(ui * mid)
            dm = self._digits(ym)
            inside = ~self._outside(dm, ym)
            best = torch.where(inside.unsqueeze(1), dm, best)
            lo = torch.where(inside.unsqueeze(1), mid, lo)
            hi = torch.where(inside.unsqueeze(1), hi, mid)
        digits[idx] = best
        return digits

    def _outside(self, digits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Rows whose fine point ``y`` is not its own coset's codeword (it would wrap)."""
        return ((self._codeword(digits) - y).abs() > 1e-6).any(dim=1)

    # ------------------------------------------------------------ codec

    def _unit(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        check_scales(scale, x.shape[0])
        s = scale.double().to(x.device).unsqueeze(1)
        return torch.where(s > 0, x.double() / s.clamp_min(1e-300), torch.zeros_like(s))

    def group_scales(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[2] != self.dim:
            raise CodecError(f"group_scales takes [m, G, {self.dim}], got {tuple(x.shape)}")
        m, g, d = x.shape
        xf = x.double()
        rms = xf.pow(2).mean(dim=(1, 2)).sqrt()
        base = rms * self.step_factor
        if len(self.step_search) == 1:
            return fp16_exact(base * self.step_search[0])
        best = best_err = None
        flat = xf.reshape(m * g, d)
        for mult in self.step_search:
            s = fp16_exact(base * mult)
            sv = s.repeat_interleave(g)
            err = (self.decode(self.encode(flat, sv), sv).double() - flat).pow(2).view(m, -1).sum(dim=1)
            if best is None:
                best, best_err = s, err
            else:
                better = err < best_err
                best = torch.where(better, s, best)
                best_err = torch.where(better, err, best_err)
        return best.float()

    def encode(self, x: torch.Tensor, scale: torch.Tensor) -> Codes:
        check_vectors(x, self.dim)
        return {"coset": self._encode_unit(self._unit(x, scale))}

    def decode(self, codes: Codes, scale: torch.Tensor) -> torch.Tensor:
        digits = self._check_codes(codes)
        check_scales(scale, digits.shape[0], encoding=False)
        return (self._codeword(digits) * scale.double().to(digits.device).unsqueeze(1)).float()

    def _check_codes(self, codes: Codes) -> torch.Tensor:
        if set(codes) != {"coset"}:
            raise CodecError(f"lattice codes must have the key 'coset', got {sorted(codes)}")
        digits = codes["coset"]
        if digits.dim() != 2 or digits.shape[1] != self.dim:
            raise CodecError(f"coset digits must have shape [n, {self.dim}], got {tuple(digits.shape)}")
        return digits

    def pack(self, codes: Codes) -> dict[str, torch.Tensor]:
        return {"coset": pack_radix(self._check_codes(codes), self.q)}

    def unpack(self, stored: dict[str, torch.Tensor], n: int) -> Codes:
        if "coset" not in stored:
            raise CodecError("stored lattice codes need the tensor 'coset'")
        return {"coset": unpack_radix(stored["coset"], self.q, n * self.dim).view(n, self.dim)}

    # ------------------------------------------------------------ references

    def codeword_reference(self, digits: list[int]) -> np.ndarray:
        """Plain reference of decoding one coset (unit step): enumeration for the coarse point."""
        z = np.asarray(digits, dtype=np.float64) @ self.lat.basis.numpy() + self.a.numpy()
        return z - self.q * nearest_fine_reference(self.lat, z / self.q)

    def encode_reference(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Plain per-vector reference of :meth:`encode` (Fincke-Pohst nearest points, loops)."""
        out = []
        a = self.a.numpy()
        binv = self.lat.basis_inv.numpy()
        for row, s in zip(x.double().tolist(), scale.double().tolist()):
            u = np.asarray(row) / s if s > 0 else np.zeros(self.dim)
            def attempt(t: float) -> tuple[list[int], bool]:
                y = nearest_fine_reference(self.lat, u * t - a) + a
                if self.lattice == "zn":
                    y = np.clip(y, -(self.q - 1) / 2.0, (self.q - 1) / 2.0)
                dg = [int(v) % self.q for v in np.round((y - a) @ binv)]
                inside = self.lattice == "zn" or np.abs(self.codeword_reference(dg) - y).max() <= 1e-6
                return dg, inside

            digits, inside = attempt(1.0)
            if not inside:
                lo, hi = 0.0, 1.0
                digits, _ = attempt(0.0)
                for _ in range(_SHRINK_STEPS):
                    mid = 0.5 * (lo + hi)
                    dm, ok = attempt(mid)
                    if ok:
                        digits, lo = dm, mid
                    else:
                        hi = mid
            out.append(digits)
        return torch.tensor(out, dtype=torch.int64)


def voronoi_codebook_reference(codec: VoronoiCodec, box: int | None = None) -> np.ndarray:
    """Plain reference of the codebook: every point ``y`` of ``L + a`` (unit step) whose
    nearest point of ``q L`` is 0, found by enumerating lattice coefficients in a box and
    testing each point with Fincke-Pohst. Returns the points ``[q^n, n]`` sorted."""
    lat, q = codec.lat, codec.q
    gen = lat.basis.numpy()
    a = codec.a.numpy()
    box = box if box is not None else q * 2 + 1
    rng = range(-box, box + 1)
    pts = []
    import itertools

    cell_radius = q * math.sqrt(float(np.max((gen**2).sum(axis=1)))) * lat.n  # generous bound
    for coef in itertools.product(rng, repeat=lat.n):
        y = np.asarray(coef, dtype=np.float64) @ gen + a
        if float(y @ y) > cell_radius**2:
            continue
        if not np.any(nearest_fine_reference(lat, y / q)):
            pts.append(y)
    out = np.array(pts)
    return out[np.lexsort(out.T[::-1])]


# ================================================================ step tuning and registry


@lru_cache(maxsize=None)
def tuned_step_factor(lattice: str, dim: int, q: int) -> float:
    """Step / RMS with the least MSE on a seeded i.i.d. unit Gaussian (2048 vectors, seed 1234).

    A geometric grid of 2^(1/8) around a volume-matched guess, refined twice by 2^(1/32);
    cached per (lattice, dim, q). The codec's ``step_search`` then adapts it per group.
    """
    codec = VoronoiCodec(lattice, dim, q, group_size=1, step_factor=1.0, step_search=None)
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(max(64, 16384 // dim), dim, generator=gen, dtype=torch.float64)
    ones = torch.ones(x.shape[0], dtype=torch.float64)

    def mse(f: float) -> float:
        s = ones * f
        return float((codec.decode(codec.encode(x, s), s).double() - x).pow(2).mean())

    # the cell of qL has volume q^n det: match it to a ball holding most of the Gaussian
    guess = 4.5 / (q * codec.lat.det ** (1.0 / dim))
    best_f, best_e = guess, mse(guess)
    for step in (2 ** (1 / 8), 2 ** (1 / 32), 2 ** (1 / 128)):
        centre = best_f
        for k in range(-8, 9) if step > 1.05 else range(-4, 5):
            f = centre * step**k
            e = mse(f)
            if e < best_e:
                best_f, best_e = f, e
    return best_f


def q_for_rate(bits: float, dim: int, group_size: int) -> int:
    """The q whose rate ``log2 q + 16 / (dim * group_size)`` is nearest ``bits`` (ties: smaller)."""
    overhead = 16.0 / (dim * group_size)
    target = bits - overhead
    if target < 1.0 - 1e-9:
        raise CodecError(
            f"lattice codes need at least 1 bit per weight plus the scale ({1 + overhead:.4g} bpw at "
            f"dim={dim}, group_size={group_size}); got {bits}: raise the rate"
        )
    lo = max(2, int(math.floor(2.0**target)))
    return min((lo, lo + 1), key=lambda q: (abs(math.log2(q) - target), q))


@register_codec(
    "lattice",
    "nested-lattice (Voronoi) code: fine lattice E8/D_n/A_n*/Z^n shaped by qL, any integer q (mixed radix)",
    default_dim=8,
    options=OPTIONS,
)
def lattice_from_rate(
    bits: float,
    dim: int = 8,
    lattice: str = OPTIONS[0].default,
    group_size: int | None = None,
    group_weights: int | None = None,
    **options,
) -> VoronoiCodec:
    """The Voronoi code of ``lattice`` whose rate (log2 q + scale) is nearest ``bits``.

    group_size (vectors per scale) or group_weights (weights per scale, a multiple of dim);
    default ``256 // dim`` vectors (256 weights at dim 8). Options: step_factor, step_search.
    """
    unknown = set(options) - {"step_factor", "step_search"}
    if unknown:
        raise CodecError(
            f"unknown lattice option(s) {sorted(unknown)}; lattice takes lattice, group_size, "
            "group_weights, step_factor, step_search"
        )
    if lattice not in LATTICES:
        raise CodecError(f"unknown lattice {lattice!r}; choose --lattice from {', '.join(LATTICES)}")
    if group_size is not None and group_weights is not None:
        raise CodecError("give group_size (vectors) or group_weights (weights), not both")
    if group_size is None and group_weights is None:
        group_size = max(1, 256 // dim)
    elif group_size is None:
        gw = group_weights
        if not isinstance(gw, int) or gw < dim or gw % dim:
            raise CodecError(f"group_weights must be a positive multiple of dim={dim}, got {gw!r}")
        group_size = gw // dim
    fine_lattice(lattice, dim)  # checks the dimension first
    return VoronoiCodec(lattice, dim, q_for_rate(float(bits), dim, group_size), group_size, **options)
