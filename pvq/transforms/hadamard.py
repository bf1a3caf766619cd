"""Hadamard transforms: the fast Walsh-Hadamard transform, dense Hadamard matrices
(Sylvester and Paley constructions) and the randomized Hadamard rotation used to
make weights and activations incoherent.

* :func:`fwht` - orthonormal FWHT along the last dim (length a power of two),
  ``log2 n`` vectorized butterfly stages.
* :func:`hadamard_matrix` - dense +-1 Hadamard matrix of order ``2^k * h`` for
  a base order ``h`` that Sylvester, Paley I (``q + 1``, ``q`` a prime power
  = 3 mod 4) or Paley II (``2 (q + 1)``, ``q`` a prime power = 1 mod 4) gives.
* :class:`RandomizedHadamard` - orthogonal ``x -> M (s * x)`` for any length
  ``n >= 1``: ``M = H_h (x) H_{2^k}`` (Kronecker: a small dense factor of order
  ``h`` on the outer index, the FWHT on the inner ``2^k`` index), ``s`` random
  signs. When no Hadamard matrix of a suitable order is known (``n = 2^k * m``
  with ``m`` odd and no ``m 2^j`` constructible, e.g. 11008 = 2^8 * 43) the
  dense factor is a seeded random orthogonal matrix of order ``m`` instead and
  ``kind`` says so.
* :class:`BlockHadamard` - ``I_m (x) T_b``: one :class:`RandomizedHadamard` ``T_b`` of order ``b``
  applied to each of the ``m = n / b`` consecutive chunks of the last dim (cheaper online: an
  11008-wide input in chunks of 256 needs no dense factor).
* :func:`rotate_weight` / :func:`unrotate_weight` - ``W' = U W V^T`` and back.

The rotation convention: with ``x' = V x`` (activations rotated by the input
transform) and ``W' = U W V^T``, ``W' x' = U (W x)``, so ``y = U^T (W' x')``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from pvq.errors import TransformError

__all__ = [
    "BlockHadamard",
    "RandomizedHadamard",
    "fwht",
    "fwht_reference",
    "hadamard_matrix",
    "has_hadamard",
    "hadamard_orders",
    "rotate_weight",
    "unrotate_weight",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _is_pow2(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp16/bf16 are computed in float32 (and cast back); float32/64 as they are."""
    if not x.is_floating_point():
        raise TransformError(f"transform input must be a float tensor, got {x.dtype}")
    return torch.float32 if x.dtype in _LOW_PRECISION else x.dtype


# ------------------------------------------------------------------ FWHT


_RADIX_LOG2 = 6  # stages of up to 64 points, each one small dense matmul


@lru_cache(maxsize=64)
def _sylvester_small(b: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return hadamard_matrix(b, dtype=dtype).to(device)


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal Walsh-Hadamard transform of ``x: [..., n]`` along the last dim.

    ``n`` must be a power of two. Equals ``x @ H / sqrt(n)`` with ``H`` the
    Sylvester matrix (symmetric, so the transform is its own inverse).
    fp16/bf16 inputs are computed in float32 and returned in their own dtype.

    Vectorized as radix-64 stages: ``H_n = H_b1 (x) H_b2 (x) ...`` with every
    ``b_i <= 64``; each stage multiplies the last axis of ``[..., b_i]`` by the
    dense ``H_bi`` (fusing ``log2 b_i`` butterfly stages into one matmul) and
    rotates that axis to the front, so after all stages the order is restored.
    """
    n = x.shape[-1]
    if not _is_pow2(n):
        raise TransformError(
            f"fwht needs a power-of-two length, got {n}; use RandomizedHadamard for other sizes"
        )
    dtype = _compute_dtype(x)
    if n == 1:
        return x.clone()
    rows = x.numel() // n
    y = x.to(dtype).reshape(rows, n)
    k = n.bit_length() - 1
    while k > 0:
        s = min(k, _RADIX_LOG2)
        b = 1 << s
        h = _sylvester_small(b, dtype, y.device)
        y = (y.reshape(-1, b) @ h).reshape(rows, n // b, b).transpose(1, 2).reshape(rows, n)
        k -= s
    y = y.reshape(x.shape) * (1.0 / math.sqrt(n))
    return y.to(x.dtype)


def fwht_reference(x: torch.Tensor) -> torch.Tensor:
    """Plain dense reference of :func:`fwht` (float64 matmul with the Sylvester matrix)."""
    n = x.shape[-1]
    h = hadamard_matrix(n) / math.sqrt(n)
    return (x.double() @ h).to(x.dtype)


# ------------------------------------------------------------------ number theory


def _factor_prime_power(q: int) -> tuple[int, int] | None:
    """``(p, e)`` with ``q = p^e``, p prime, or None if q is not a prime power."""
    if q < 2:
        return None
    p = 2
    while p * p <= q:
        if q % p == 0:
            break
        p += 1
    else:
        return (q, 1)  # q is prime
    e = 0
    while q % p == 0:
        q //= p
        e += 1
    return (p, e) if q == 1 else None


def _poly_mod(a: list[int], f: list[int], p: int) -> list[int]:
    """Remainder of polynomial ``a`` modulo monic ``f`` over GF(p); coeffs low -> high."""
    a = [c % p for c in a]
    d = len(f) - 1
    while len(a) - 1 >= d:
        lead = a[-1]
        if lead:
            shift = len(a) - 1 - d
            for i, c in enumerate(f):
                a[shift + i] = (a[shift + i] - lead * c) % p
        a.pop()
    return a


def _irreducible_poly(p: int, e: int) -> list[int]:
    """First monic irreducible polynomial of degree ``e`` over GF(p) (coeffs low -> high)."""

    def monic(deg: int):
        for k in range(p**deg):
            coeffs = [(k // p**i) % p for i in range(deg)]
            yield coeffs + [1]

    for f in monic(e):
        if f[0] == 0:
            continue  # divisible by x
        if all(any(_poly_mod(list(f), g, p)) for d in range(1, e // 2 + 1) for g in monic(d)):
            return f
    raise AssertionError(f"no irreducible polynomial of degree {e} over GF({p})")  # never


def _gf_quadratic_character(q: int) -> tuple[np.ndarray, np.ndarray]:
    """Jacobsthal data of GF(q): ``chi[a - b]`` as a [q, q] int8 matrix and ``chi`` itself.

    Elements are integers 0..q-1 whose base-p digits are polynomial coefficients
    (for prime q: the residues). ``chi(0) = 0``, +1 for nonzero squares, -1 otherwise.
    """
    pe = _factor_prime_power(q)
    if pe is None:
        raise TransformError(f"{q} is not a prime power")
    p, e = pe
    digits = np.array([[(a // p**i) % p for i in range(e)] for a in range(q)], dtype=np.int64)
    weights = p ** np.arange(e, dtype=np.int64)
    if e == 1:
        squares = {(a * a) % p for a in range(1, p)}
    else:
        f = _irreducible_poly(p, e)
        squares = set()
        for a in range(1, q):
            c = digits[a].tolist()
            prod = [0] * (2 * e - 1)
            for i, ci in enumerate(c):
                for j, cj in enumerate(c):
                    prod[i + j] += ci * cj
            r = _poly_mod(prod, f, p)
            squares.add(sum(int(v) * p**i for i, v in enumerate(r)))
    chi = -np.ones(q, dtype=np.int8)
    chi[0] = 0
    chi[list(squares)] = 1
    diff = ((digits[:, None, :] - digits[None, :, :]) % p) @ weights  # index of a_i - a_j
    return chi[diff], chi


# ------------------------------------------------------------------ dense Hadamard


def _base_construction(h: int) -> tuple[str, int] | None:
    """How to build a Hadamard matrix of order ``h`` directly (not by doubling)."""
    if h in (1, 2):
        return ("sylvester", h)
    if h % 4:
        return None
    q = h - 1
    pe = _factor_prime_power(q)
    if pe is not None and q % 4 == 3:
        return ("paley1", q)
    if h % 2 == 0:
        q = h // 2 - 1
        pe = _factor_prime_power(q)
        if pe is not None and q % 4 == 1:
            return ("paley2", q)
    return None


@lru_cache(maxsize=None)
def _plan(n: int) -> tuple[str, int, int] | None:
    """``(construction, q_or_order, doublings)`` for order ``n`` with the smallest base."""
    if n < 1:
        return None
    k = 0
    m = n
    while m % 2 == 0:
        m //= 2
        k += 1
    for j in range(k, -1, -1):  # base order m * 2^(k-j), smallest first
        base = n >> j
        c = _base_construction(base)
        if c is not None:
            return (c[0], c[1], j)
    return None


def has_hadamard(n: int) -> bool:
    """Whether :func:`hadamard_matrix` can build order ``n``."""
    return _plan(n) is not None


def hadamard_orders(limit: int) -> list[int]:
    """All orders ``<= limit`` that :func:`hadamard_matrix` builds."""
    return [n for n in range(1, limit + 1) if has_hadamard(n)]


@lru_cache(maxsize=64)
def _hadamard_int8(n: int) -> np.ndarray:
    plan = _plan(n)
    if plan is None:
        raise TransformError(
            f"no Hadamard matrix of order {n} is constructed here (Sylvester 2^k, Paley I for "
            "q+1 with q a prime power = 3 mod 4, Paley II for 2(q+1) with q = 1 mod 4, times "
            f"powers of two); orders near {n} that work: "
            f"{[m for m in range(max(1, n - 16), n + 17) if has_hadamard(m)]}"
        )
    kind, arg, doublings = plan
    if kind == "sylvester":
        h = np.ones((arg, arg), dtype=np.int8)
        if arg == 2:
            h[1, 1] = -1
    elif kind == "paley1":
        q = arg
        jac, _ = _gf_quadratic_character(q)
        # Q[i, j] = chi(a_j - a_i) is skew-symmetric for q = 3 mod 4.
        s = np.zeros((q + 1, q + 1), dtype=np.int8)
        s[0, 1:] = 1
        s[1:, 0] = -1
        s[1:, 1:] = jac.T
        h = s + np.eye(q + 1, dtype=np.int8)
    else:  # paley2
        q = arg
        jac, _ = _gf_quadratic_character(q)
        c = np.zeros((q + 1, q + 1), dtype=np.int8)  # symmetric conference matrix
        c[0, 1:] = 1
        c[1:, 0] = 1
        c[1:, 1:] = jac
        a = np.array([[1, 1], [1, -1]], dtype=np.int8)
        b = np.array([[1, -1], [-1, -1]], dtype=np.int8)
        h = np.kron(c, a) + np.kron(np.eye(q + 1, dtype=np.int8), b)
    sylvester2 = np.array([[1, 1], [1, -1]], dtype=np.int8)
    for _ in range(doublings):
        h = np.kron(sylvester2, h)
    return h


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Dense Hadamard matrix ``H: [n, n]`` with +-1 entries, ``H H^T = n I``.

    Orders: ``2^k * h`` where ``h`` is 1, 2, ``q + 1`` (Paley I, ``q`` a prime
    power = 3 mod 4) or ``2 (q + 1)`` (Paley II, ``q`` a prime power = 1 mod 4).
    Powers of two give the Sylvester matrix (the one :func:`fwht` applies).
    Raises :class:`TransformError` for other orders (e.g. 92, 172).
    """
    if not isinstance(n, int) or n < 1:
        raise TransformError(f"Hadamard order must be a positive integer, got {n!r}")
    return torch.from_numpy(_hadamard_int8(n).copy()).to(dtype)


# ------------------------------------------------------------------ randomized Hadamard


def _random_orthogonal(m: int, gen: torch.Generator) -> torch.Tensor:
    """Haar-random orthogonal [m, m] float64: QR of a Gaussian with R's diagonal made positive."""
    g = torch.randn(m, m, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    d = torch.sign(torch.diagonal(r))
    d[d == 0] = 1.0
    return q * d


class RandomizedHadamard:
    """Orthogonal transform ``x -> M (s * x)`` along the last dim, for any length ``n >= 1``.

    ``M = F (x) H_p``: ``p`` is a power of two (applied by :func:`fwht` on the
    inner index), ``F`` a dense orthonormal ``[h, h]`` factor on the outer index
    (``n = h * p``). ``F`` is a normalized Hadamard matrix when one of order
    ``h`` is known (``kind == "hadamard"``); otherwise ``h`` is the odd part of
    ``n`` and ``F`` a seeded random orthogonal matrix
    (``kind == "hadamard x random orthogonal"``). ``s`` are random +-1 signs
    drawn from a ``torch.Generator`` seeded with ``seed`` (no global RNG).
    """

    HADAMARD = "hadamard"
    FALLBACK = "hadamard x random orthogonal"

    def __init__(self, n: int, seed: int = 0):
        if not isinstance(n, int) or n < 1:
            raise TransformError(f"transform size must be a positive integer, got {n!r}")
        if not isinstance(seed, int):
            raise TransformError(f"seed must be an integer, got {seed!r}")
        gen = torch.Generator().manual_seed(seed)
        signs = (torch.randint(0, 2, (n,), generator=gen) * 2 - 1).to(torch.int8)
        plan = _plan(n)
        if plan is not None:
            h = n >> plan[2]
            dense = hadamard_matrix(h) / math.sqrt(h)
        else:
            h = n
            while h % 2 == 0:
                h //= 2
            dense = _random_orthogonal(h, gen)
        self._set(n, seed, signs, dense)

    def _set(self, n: int, seed: int, signs: torch.Tensor, dense: torch.Tensor) -> None:
        h = dense.shape[0]
        if dense.shape != (h, h) or n % h or not _is_pow2(n // h) or signs.shape != (n,):
            raise TransformError(
                f"inconsistent transform state: n={n}, signs {tuple(signs.shape)}, "
                f"dense factor {tuple(dense.shape)} (need n = h * 2^k and [h, h])"
            )
        self.n = n
        self.seed = seed
        self.signs = signs
        self.dense = dense.double().contiguous()
        self.dense_order = h
        self.pow2_order = n // h
        is_hadamard = bool(
            torch.allclose(self.dense.abs(), torch.full_like(self.dense, 1 / math.sqrt(h)))
        )
        self.kind = self.HADAMARD if is_hadamard else self.FALLBACK
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _factors(self, device: torch.device, dtype: torch.dtype):
        key = (device, dtype)
        if key not in self._cache:
            self._cache[key] = (
                self.signs.to(device=device, dtype=dtype),
                self.dense.to(device=device, dtype=dtype),
            )
        return self._cache[key]

    def _check(self, x: torch.Tensor) -> torch.dtype:
        if x.shape[-1:] != (self.n,):
            raise TransformError(
                f"transform of size {self.n} applied to a tensor with last dim "
                f"{x.shape[-1] if x.dim() else None} (shape {tuple(x.shape)})"
            )
        return _compute_dtype(x)

    def _dense_apply(self, v: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        """Multiply the outer axis of ``v: [rows, h, p]`` by ``f_t^T`` as one matmul."""
        rows, h, p = v.shape
        out = v.transpose(1, 2).reshape(rows * p, h) @ f_t
        return out.reshape(rows, p, h).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``M (s * x)`` for ``x: [..., n]``; same shape and dtype."""
        dtype = self._check(x)
        s, f = self._factors(x.device, dtype)
        rows = x.numel() // self.n
        v = (x.to(dtype) * s).reshape(rows, self.dense_order, self.pow2_order)
        if self.pow2_order > 1:
            v = fwht(v)
        if self.dense_order > 1:
            v = self._dense_apply(v, f.T)
        return v.reshape(x.shape).to(x.dtype)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """``s * (M^T y)``, the exact inverse of :meth:`forward`."""
        dtype = self._check(y)
        s, f = self._factors(y.device, dtype)
        rows = y.numel() // self.n
        v = y.to(dtype).reshape(rows, self.dense_order, self.pow2_order)
        if self.pow2_order > 1:
            v = fwht(v)
        if self.dense_order > 1:
            v = self._dense_apply(v, f)
        return (v.reshape(y.shape) * s).to(y.dtype)

    __call__ = forward

    @property
    def chunk(self) -> RandomizedHadamard:
        """The transform applied to each chunk of ``chunk.n`` numbers (here: the whole row)."""
        return self

    def matrix(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Dense ``[n, n]`` matrix ``T`` with ``forward(x) == x @ T.T`` (reference)."""
        f = self.dense
        hp = hadamard_matrix(self.pow2_order) / math.sqrt(self.pow2_order)
        return (torch.kron(f, hp) * self.signs.double()).to(dtype)

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors that rebuild this transform exactly (for a checkpoint).

        ``signs``: int8 [n]; ``dense``: float64 [h, h] (the dense factor,
        ``[[1.]]`` when none); ``seed``: int64 scalar.
        """
        return {
            "signs": self.signs.clone(),
            "dense": self.dense.clone(),
            "seed": torch.tensor(self.seed, dtype=torch.int64),
        }

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> RandomizedHadamard:
        """Rebuild from :meth:`state` without recomputing anything random."""
        missing = {"signs", "dense", "seed"} - set(state)
        if missing:
            raise TransformError(f"transform state lacks {sorted(missing)}")
        signs = state["signs"].to(torch.int8).reshape(-1)
        if not bool(((signs == 1) | (signs == -1)).all()):
            raise TransformError("transform state 'signs' must hold only +1 and -1")
        obj = cls.__new__(cls)
        obj._set(signs.numel(), int(state["seed"]), signs.clone(), state["dense"].clone())
        return obj

    def __repr__(self) -> str:
        return (
            f"RandomizedHadamard(n={self.n}, seed={self.seed}, kind={self.kind!r}, "
            f"dense={self.dense_order}, fwht={self.pow2_order})"
        )


class BlockHadamard:
    """Orthogonal ``x -> (I_m (x) T_b) x`` along the last dim: the randomized Hadamard ``T_b``
    (:class:`RandomizedHadamard` of order ``block``, seeded by ``seed``) on each of the
    ``m = n / block`` consecutive chunks of ``block`` numbers, the same ``T_b`` (signs
    included) on every chunk.

    An outlier is spread over its chunk only (``block`` numbers, not ``n``); in exchange the
    transform needs no dense factor where ``n``'s Hadamard would (11008 = 43 x 256: chunks of 256
    are pure Walsh-Hadamard), and rotation kernels apply ``chunk`` to ``[rows * m, block]``.
    """

    def __init__(self, n: int, block: int, seed: int = 0):
        for name, v in (("n", n), ("block", block)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise TransformError(f"BlockHadamard {name} must be a positive integer, got {v!r}")
        if n % block:
            raise TransformError(f"BlockHadamard block {block} does not divide the transform size {n}")
        self.n = n
        self.block = block
        self.seed = seed
        self._chunk = RandomizedHadamard(block, seed)

    @property
    def chunk(self) -> RandomizedHadamard:
        """The transform of one chunk of ``block`` numbers."""
        return self._chunk

    def _chunks(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1:] != (self.n,):
            raise TransformError(
                f"transform of size {self.n} applied to a tensor with last dim "
                f"{x.shape[-1] if x.dim() else None} (shape {tuple(x.shape)})"
            )
        return x.reshape(*x.shape[:-1], self.n // self.block, self.block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(I_m (x) T_b) x`` for ``x: [..., n]``; same shape and dtype."""
        return self._chunk.forward(self._chunks(x)).reshape(x.shape)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The exact inverse of :meth:`forward`."""
        return self._chunk.inverse(self._chunks(y)).reshape(y.shape)

    __call__ = forward

    def matrix(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Dense ``[n, n]`` matrix ``T`` with ``forward(x) == x @ T.T`` (reference)."""
        return torch.block_diag(*[self._chunk.matrix(dtype)] * (self.n // self.block))

    def __repr__(self) -> str:
        return f"BlockHadamard(n={self.n}, block={self.block}, chunk={self._chunk!r})"


# ------------------------------------------------------------------ weights


def rotate_weight(
    w: torch.Tensor, u: RandomizedHadamard | BlockHadamard | None, v: RandomizedHadamard | BlockHadamard | None
) -> torch.Tensor:
    """``U W V^T`` for ``W: [out, in]``; ``U`` acts on the out dim, ``V`` on the in dim.

    Either transform may be None (identity). Then ``W' (V x) = U (W x)``.
    """
    if w.dim() != 2:
        raise TransformError(f"weight must be [out, in], got shape {tuple(w.shape)}")
    if u is not None:
        w = u.forward(w.T).T
    if v is not None:
        w = v.forward(w)
    return w


def unrotate_weight(
    w: torch.Tensor, u: RandomizedHadamard | BlockHadamard | None, v: RandomizedHadamard | BlockHadamard | None
) -> torch.Tensor:
    """``U^T W' V``, the inverse of :func:`rotate_weight`."""
    if w.dim() != 2:
        raise TransformError(f"weight must be [out, in], got shape {tuple(w.shape)}")
    if v is not None:
        w = v.inverse(w)
    if u is not None:
        w = u.inverse(w.T).T
    return w
