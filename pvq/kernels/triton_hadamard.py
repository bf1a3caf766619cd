"""A Triton kernel for the randomized Hadamard transform of activations (one launch per call).

:class:`~pvq.transforms.RandomizedHadamard` maps ``x -> M (s * x)`` with
``M = F (x) H_p`` (``F`` a dense ``[h, h]`` factor, ``H_p`` the orthonormal
Sylvester matrix of a power of two ``p``). In PyTorch that is a sign multiply,
``log_64 p`` matmul stages with transposes, the dense factor and dtype casts:
about ten launches per row block, which dominate a batch-1 linear layer. Here
one program transforms one row in registers: ``H_p = H_p1 (x) H_p2`` as two
``tl.dot`` (right multiply by ``H_p2``, then ``H_p1`` on the middle axis), then
``F`` (padded to a power of two >= 16) on the outer axis, all in IEEE float32.

Two kernels, one launch either way (:func:`hadamard_rotate` picks):

* *row in registers* - ``p = p1 p2`` with ``p1, p2`` powers of two in [16, 64] (p from
  256 to 4096) and ``h_pad * p <= 16384``: as above, one program per row;
* *tiled dense factor* - ``p`` in {16, 32, 64} (one ``tl.dot`` with ``H_p``) and any
  ``h >= 2`` (e.g. 11008 = 344 x 32, 384 = 12 x 32, 320 = 20 x 16): a row is the
  ``[h, p]`` matrix ``X`` and ``Y = F (X H_p)``; each program computes ``BH`` rows of ``Y``,
  looping over the ``h`` axis in chunks of ``BK``: ``Z = X[chunk] H_p`` then
  ``acc += F[rows, chunk] Z`` (``F`` zero-padded to a multiple of 32; IEEE float32).

Other sizes use the PyTorch path (:func:`supported` says which; :func:`preferred` also says
when the PyTorch path is faster: the tiled kernel recomputes ``X H_p`` in every program, which
loses to PyTorch's matmuls above 64 rows; H100: ``benchmarks/hadamard.py``). The reference is
``RandomizedHadamard.forward`` / ``.inverse``.
"""

from __future__ import annotations

import math
import weakref
from functools import lru_cache

import torch
import triton
import triton.language as tl

from pvq.transforms import RandomizedHadamard
from pvq.transforms.hadamard import hadamard_matrix

from .triton_launch import StraightLauncher

__all__ = ["GATED_ACTIVATIONS", "gated_hadamard_rotate", "gated_supported", "hadamard_rotate", "supported"]

MAX_ELEMENTS = 16384


def _split(p: int) -> tuple[int, int] | None:
    e = p.bit_length() - 1
    if p != 1 << e or not 8 <= e <= 12:
        return None
    return 1 << (e - e // 2), 1 << (e // 2)


def _hp(h: int) -> int:
    return 1 if h == 1 else max(16, triton.next_power_of_2(h))


TILED_P = (16, 32, 64)  # p = 128 compiled (a 128 x 128 H_p tile) but ran 5x slower than PyTorch on an H100
TILED_MAX_ROWS = 64
TILE = 32  # BH = BK: rows of Y per program and the chunk of the h axis per step


def _in_registers(rh: RandomizedHadamard) -> bool:
    return _split(rh.pow2_order) is not None and _hp(rh.dense_order) * rh.pow2_order <= MAX_ELEMENTS


def _tiled(rh: RandomizedHadamard) -> bool:
    return rh.pow2_order in TILED_P and rh.dense_order >= 2


def supported(rh: RandomizedHadamard) -> bool:
    """Whether a kernel transforms rows of this size."""
    return _in_registers(rh) or _tiled(rh)


def preferred(rh: RandomizedHadamard, rows: int) -> bool:
    """Whether a kernel is the faster way to transform ``rows`` rows of this size."""
    return _in_registers(rh) or (_tiled(rh) and rows <= TILED_MAX_ROWS)


@lru_cache(maxsize=None)
def _sylvester(n: int, device: str) -> torch.Tensor:
    return hadamard_matrix(n, dtype=torch.float32).to(device).contiguous()


_DENSE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # transform -> {(device, inverse): tensors}


def _dense(rh: RandomizedHadamard, device, inverse: bool, hp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(``F`` or ``F^T`` zero-padded to ``[hp, hp]``, the signs), float32 on ``device``, cached per
    transform while it lives."""
    cache = _DENSE.setdefault(rh, {})
    key = (str(device), inverse, hp)
    if key not in cache:
        f = torch.zeros(hp, hp, dtype=torch.float32)
        d = rh.dense.to(torch.float32)
        f[: rh.dense_order, : rh.dense_order] = d.T if inverse else d
        cache[key] = (f.to(device).contiguous(), rh.signs.to(device=device, dtype=torch.float32).contiguous())
    return cache[key]


@triton.jit
def _hadamard_kernel(x_ptr, out_ptr, signs_ptr, h1_ptr, h2_ptr, f_ptr, n, scale,
                     H: tl.constexpr, HP: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
                     INVERSE: tl.constexpr, PREC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    a = tl.arange(0, HP)[:, None] * (P1 * P2) + tl.arange(0, P1 * P2)[None, :]  # [HP, p] offsets
    ok = tl.arange(0, HP)[:, None] < H
    x = tl.load(x_ptr + row * n + a, mask=ok, other=0.0).to(tl.float32)
    s = tl.load(signs_ptr + a, mask=ok, other=0.0)
    if not INVERSE:
        x = x * s
    i1 = tl.arange(0, P1)
    i2 = tl.arange(0, P2)
    h2 = tl.load(h2_ptr + i2[:, None] * P2 + i2[None, :])
    h1 = tl.load(h1_ptr + i1[:, None] * P1 + i1[None, :])
    y = tl.dot(tl.reshape(x, (HP * P1, P2)), h2, input_precision=PREC)  # H_p2 on the inner axis
    y = tl.permute(tl.reshape(y, (HP, P1, P2)), (0, 2, 1))
    y = tl.dot(tl.reshape(y, (HP * P2, P1)), h1, input_precision=PREC)  # H_p1 on the middle axis
    y = tl.reshape(tl.permute(tl.reshape(y, (HP, P2, P1)), (0, 2, 1)), (HP, P1 * P2))
    if HP > 1:
        j = tl.arange(0, HP)
        f = tl.load(f_ptr + j[:, None] * HP + j[None, :])
        y = tl.dot(f, y, input_precision=PREC)  # the dense factor on the outer axis
    y = y * scale
    if INVERSE:
        y = y * s
    tl.store(out_ptr + row * n + a, y.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _hadamard_tiled_kernel(x_ptr, out_ptr, signs_ptr, hp_ptr, f_ptr, n, h, scale, HPAD: tl.constexpr,
                           P: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, INVERSE: tl.constexpr,
                           PREC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    ri = tl.program_id(1) * BH + tl.arange(0, BH)  # rows of Y (the dense factor's output axis)
    rp = tl.arange(0, P)
    hmat = tl.load(hp_ptr + rp[:, None] * P + rp[None, :])
    acc = tl.zeros((BH, P), dtype=tl.float32)
    for k0 in range(0, HPAD, BK):
        rk = k0 + tl.arange(0, BK)
        a = rk[:, None] * P + rp[None, :]
        ok = (rk < h)[:, None]
        x = tl.load(x_ptr + row * n + a, mask=ok, other=0.0).to(tl.float32)
        if not INVERSE:
            x = x * tl.load(signs_ptr + a, mask=ok, other=0.0)
        z = tl.dot(x, hmat, input_precision=PREC)  # [BK, P]: H_p on the inner axis
        f = tl.load(f_ptr + ri[:, None] * HPAD + rk[None, :])  # [BH, BK] of the zero-padded factor
        acc += tl.dot(f, z, input_precision=PREC)
    y = acc * scale
    a = ri[:, None] * P + rp[None, :]
    ok = (ri < h)[:, None]
    if INVERSE:
        y = y * tl.load(signs_ptr + a, mask=ok, other=0.0)
    tl.store(out_ptr + row * n + a, y.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _gated_hadamard_kernel(gate_ptr, up_ptr, out_ptr, signs_ptr, h1_ptr, h2_ptr, in_stride, chunks, scale,
                           P1: tl.constexpr, P2: tl.constexpr, PREC: tl.constexpr):
    """Program r: chunk ``r % chunks`` of token ``r // chunks``: ``M (s * (silu(g) * u))`` of its P1 P2 inputs,
    in float32 (``M = H_p1 (x) H_p2``, orthonormal), written to the token's row of ``out`` (rows of chunks * p).
    (A programmatic dependent launch of it, session 31's experiment, measured no faster end to end in session 32 and
    left: docs/kernels.md.)"""
    r = tl.program_id(0).to(tl.int64)
    t, c = r // chunks, r % chunks
    a = tl.arange(0, P1 * P2)
    src = t * in_stride + c * (P1 * P2) + a
    g = tl.load(gate_ptr + src).to(tl.float32)
    u = tl.load(up_ptr + src).to(tl.float32)
    x = g / (1.0 + tl.exp(-g)) * u * tl.load(signs_ptr + a)
    i1 = tl.arange(0, P1)
    i2 = tl.arange(0, P2)
    h2 = tl.load(h2_ptr + i2[:, None] * P2 + i2[None, :])
    h1 = tl.load(h1_ptr + i1[:, None] * P1 + i1[None, :])
    y = tl.dot(tl.reshape(x, (P1, P2)), h2, input_precision=PREC)  # H_p2 on the inner axis
    y = tl.dot(h1, y, input_precision=PREC)  # H_p1 on the outer axis (symmetric)
    y = tl.reshape(y, (P1 * P2,)) * scale
    tl.store(out_ptr + r * (P1 * P2) + a, y.to(out_ptr.dtype.element_ty))


GATED_ACTIVATIONS = ("silu",)
"""Gated activations :func:`gated_hadamard_rotate` computes before the rotation."""


def gated_supported(rh: RandomizedHadamard) -> bool:
    """Whether :func:`gated_hadamard_rotate` takes transforms of this size: a pure power of two from 256 to 4096
    (no dense factor; e.g. the chunks of ``pvq quantize --rotation-block 256``)."""
    return rh.dense_order == 1 and _split(rh.pow2_order) is not None


def gated_hadamard_rotate(rh: RandomizedHadamard, gate: torch.Tensor, up: torch.Tensor, activation: str = "silu",
                          precision: str = "ieee", num_warps: int = 4) -> torch.Tensor:
    """``rh.forward(silu(gate) * up)`` chunk by chunk for ``gate, up: [T, n * k]`` (views with unit inner stride,
    e.g. the halves of a merged gate/up product; each row ``k`` chunks of ``rh.n``): ``[T, n * k]`` in gate's dtype,
    one launch, the activation, product and rotation in float32 (the unfused path rounds after each)."""
    if activation not in GATED_ACTIVATIONS:
        raise ValueError(f"gated activation must be one of {GATED_ACTIVATIONS}, got {activation!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not gated_supported(rh):
        raise ValueError(f"gated_hadamard_rotate takes power-of-two transforms of 256 to 4096, not n = {rh.n}")
    if gate.dim() != 2 or gate.shape != up.shape or gate.shape[1] % rh.n or gate.stride() != up.stride() \
            or gate.stride(1) != 1:
        raise ValueError(f"gate and up must be [T, a multiple of {rh.n}] of one shape and strides, unit inner "
                         f"stride; got {tuple(gate.shape)} {gate.stride()} and {tuple(up.shape)} {up.stride()}")
    rows, width = gate.shape
    out = torch.empty(rows, width, dtype=gate.dtype, device=gate.device)
    if out.numel() == 0:
        return out
    p1, p2 = _split(rh.pow2_order)
    dev = str(gate.device)
    _, signs = _dense(rh, gate.device, False, 1)
    _GATED((rows * (width // rh.n),), gate, up, out, signs, _sylvester(p1, dev), _sylvester(p2, dev), gate.stride(0),
           width // rh.n, 1.0 / math.sqrt(rh.n), P1=p1, P2=p2, PREC=precision, num_warps=num_warps)
    return out


PRECISIONS = ("ieee", "tf32x3")

# launched straight after their first launch of a specialization (triton_launch): a 7B prefill runs 32 gated ones
_GATED = StraightLauncher(_gated_hadamard_kernel)
_ROTATE = StraightLauncher(_hadamard_kernel)
_ROTATE_TILED = StraightLauncher(_hadamard_tiled_kernel)


def hadamard_rotate(rh: RandomizedHadamard, x: torch.Tensor, inverse: bool = False, precision: str = "ieee",
                    num_warps: int = 4) -> torch.Tensor:
    """``rh.forward(x)`` (or ``rh.inverse(x)``) for ``x: [..., n]`` in one launch; same shape and dtype.
    ``precision``: the products, ``ieee`` float32 FMAs or ``tf32x3`` (three TF32 tensor-core
    products, about float32's accuracy)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not supported(rh):
        raise ValueError(f"hadamard_rotate does not take n = {rh.n} (see supported())")
    if x.shape[-1] != rh.n:
        raise ValueError(f"transform of size {rh.n} applied to shape {tuple(x.shape)}")
    rows = x.reshape(-1, rh.n).contiguous()
    out = torch.empty_like(rows)
    dev = str(x.device)
    scale = 1.0 / math.sqrt(rh.pow2_order)
    if _in_registers(rh):
        p1, p2 = _split(rh.pow2_order)
        hp = _hp(rh.dense_order)
        f, signs = _dense(rh, x.device, inverse, hp)
        _ROTATE((rows.shape[0],), rows, out, signs, _sylvester(p1, dev), _sylvester(p2, dev), f, rh.n, scale,
                H=rh.dense_order, HP=hp, P1=p1, P2=p2, INVERSE=inverse, PREC=precision, num_warps=num_warps)
    else:
        hpad = -(-rh.dense_order // TILE) * TILE
        f, signs = _dense(rh, x.device, inverse, hpad)
        _ROTATE_TILED((rows.shape[0], hpad // TILE), rows, out, signs, _sylvester(rh.pow2_order, dev), f, rh.n,
                      rh.dense_order, scale, HPAD=hpad, P=rh.pow2_order, BH=TILE, BK=TILE, INVERSE=inverse,
                      PREC=precision, num_warps=num_warps)
    return out.reshape(x.shape)
