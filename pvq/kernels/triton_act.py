"""Triton kernels of the online PVQ activation projection (:mod:`pvq.kernels.act_projection`).

Rows ``x [n, in]`` (float32 or float64) -> points ``[n, in]`` (int8 or int16) and float32
gains ``[n, in / D]``, the :class:`~pvq.codecs.activation.PyramidActivationQuantizer` math
in float64 registers. One program per block of ``BLOCK_V`` vectors of ``D`` (``D`` padded to
a power of two, masked): L1 norm, floor of ``|x| K / |x|_1``, the overshoot fix and the greedy
fill (first maximum on ties, as ``torch.argmax``), then the gain: fp16 least squares, or the
gain code (binary search in the thresholds) and multiplier ``level * norm / |y|``. Quantized
gains take a second launch first: the fp16-rounded L2 norm of each token ``[n]``.

Vectors whose L1 norm or ``K / |x|_1`` is not finite (inputs outside float32's range, NaN,
inf: the reference refuses them) get the zero vector's point and a NaN gain.
Importing this module needs Triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_search import greedy_fill_rows

__all__ = ["act_project", "token_norms"]


@triton.jit
def _fp16_round(v):
    """fp16_exact of float64 ``v``: to float32, clamped to fp16's range, to fp16, back to float32."""
    v32 = v.to(tl.float32)
    v32 = tl.minimum(tl.maximum(v32, -65504.0), 65504.0)
    return v32.to(tl.float16).to(tl.float32)


@triton.jit
def _token_norms(x_ptr, out_ptr, N, IN, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mn = rn < N
    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float64)
    for c in range(0, IN, BLOCK_C):
        rc = c + tl.arange(0, BLOCK_C)
        v = tl.load(x_ptr + rn[:, None].to(tl.int64) * IN + rc[None, :], mask=mn[:, None] & (rc < IN)[None, :],
                    other=0.0).to(tl.float64)
        acc += v * v
    tl.store(out_ptr + rn, _fp16_round(tl.sqrt(tl.sum(acc, axis=1))), mask=mn)


@triton.jit
def _act_project(x_ptr, norm_ptr, th_ptr, lv_ptr, pts_ptr, g_ptr, NV, J,
                 D: tl.constexpr, K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_V: tl.constexpr,
                 GAIN_BITS: tl.constexpr):
    rv = tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)
    cols = tl.arange(0, BLOCK_D)
    mv = rv < NV
    mc = cols < D
    offs = rv[:, None].to(tl.int64) * D + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mv[:, None] & mc[None, :], other=0.0).to(tl.float64)
    a = tl.abs(x)
    l1 = tl.sum(a, axis=1)
    r = (1.0 / tl.where(l1 > 0, l1, 1.0)) * K  # torch's K / l1 is l1.reciprocal() * K
    bad = (l1 != l1) | (l1 == float("inf")) | (r == float("inf"))
    flat = (l1 == 0) | bad  # all pulses on coordinate 0
    a = tl.where(flat[:, None], (cols == 0).to(tl.float64)[None, :], a)
    r = tl.where(flat, K * 1.0, r)

    # floor, then take pulses back from the first largest entry while the sum exceeds K
    y = tl.maximum(tl.floor(a * r[:, None]), 0.0).to(tl.int32)
    over = tl.sum(y, axis=1) - K
    while tl.max(over, axis=0) > 0:
        top = tl.max(y, axis=1)
        first = tl.min(tl.where(y == top[:, None], cols[None, :], BLOCK_D), axis=1)
        y -= ((cols[None, :] == first[:, None]) & (over > 0)[:, None]).to(tl.int32)
        over = tl.sum(y, axis=1) - K

    # greedy fill: each pulse where (<a, y> + a_i)^2 / (<y, y> + 2 y_i + 1) is largest
    yd = y.to(tl.float64)
    xy = tl.sum(a * yd, axis=1)
    yy = tl.sum(yd * yd, axis=1)
    left = K - tl.sum(y, axis=1)
    yd, yy = greedy_fill_rows(a, yd, xy, yy, left, mc, cols, BLOCK_D)

    ys = tl.where(x < 0, -yd, yd)
    tl.store(pts_ptr + offs, ys.to(pts_ptr.dtype.element_ty), mask=mv[:, None] & mc[None, :])
    if GAIN_BITS == 0:
        num = tl.sum(x * ys, axis=1)
        num = tl.where(num == 0, 0.0, num)  # +0, as torch's sum: all -0.0 products sum to -0.0 on the GPU
        g = _fp16_round(num / yy)
    else:
        scale = tl.load(norm_ptr + rv // J, mask=mv, other=0.0).to(tl.float64)
        ynorm = tl.sqrt(yy)
        amp = tl.sum(x * (ys / ynorm[:, None]), axis=1)
        # the reference divides by max(scale, 1e-30); where scale is 0 the multiplier is 0 whatever the code
        amp = tl.maximum(amp / tl.where(scale > 0, scale, 1.0), 0.0).to(tl.float32).to(tl.float64)
        code = tl.zeros((BLOCK_V,), dtype=tl.int32)  # thresholds below amp (bucketize), table padded with +inf
        for i in tl.static_range(GAIN_BITS):
            th = tl.load(th_ptr + code + ((1 << (GAIN_BITS - 1 - i)) - 1), mask=mv, other=float("inf"))
            code = tl.where(th < amp, code + (1 << (GAIN_BITS - 1 - i)), code)
        level = tl.load(lv_ptr + code, mask=mv, other=0.0).to(tl.float64)
        g = (level * scale / ynorm).to(tl.float32)
    g = tl.where(bad, float("nan"), g)
    tl.store(g_ptr + rv, g, mask=mv)


def token_norms(x: torch.Tensor) -> torch.Tensor:
    """fp16-rounded L2 norms ``[n]`` float32 (fp16 values) of rows ``x [n, in]`` (contiguous)."""
    n, m = x.shape
    out = torch.empty(n, dtype=torch.float32, device=x.device)
    block_c = min(256, triton.next_power_of_2(m))
    block_n = max(1, min(16, 2048 // block_c))
    _token_norms[(triton.cdiv(n, block_n),)](x, out, n, m, BLOCK_N=block_n, BLOCK_C=block_c, enable_fp_fusion=False)
    return out


def act_project(x: torch.Tensor, dim: int, pulses: int, point_dtype: torch.dtype,
                thresholds: torch.Tensor | None = None, levels: torch.Tensor | None = None,
                block_v: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``[n, in]`` (``point_dtype``) and float32 gains ``[n, in / dim]`` of rows ``x [n, in]``
    (float32/float64, contiguous). fp16 gains without tables; quantized gains with ``thresholds``
    ``[2^b]`` float64 (the codec's ``2^b - 1`` thresholds, then +inf) and ``levels`` ``[2^b]`` float32."""
    n, m = x.shape
    nv, j = n * (m // dim), m // dim
    block_d = max(2, triton.next_power_of_2(dim))
    if block_v is None:  # 256 to 1024 entries per program, about 512 programs on large inputs (CPU interpreter: 1024)
        most = max(1, 1024 // block_d)
        block_v = most if x.device.type == "cpu" else min(most, max(max(1, 256 // block_d),
                                                                   triton.next_power_of_2(triton.cdiv(nv, 512))))
    points = torch.empty(n, m, dtype=point_dtype, device=x.device)
    gains = torch.empty(n, j, dtype=torch.float32, device=x.device)
    gain_bits = 0
    norms = th = lv = gains  # unused pointers for fp16 gains
    if thresholds is not None:
        gain_bits = thresholds.numel().bit_length() - 1
        norms, th, lv = token_norms(x), thresholds, levels
    warps = max(1, min(4, block_v * block_d // 256))
    _act_project[(triton.cdiv(nv, block_v),)](x, norms, th, lv, points, gains, nv, j, D=dim, K=pulses,
                                              BLOCK_D=block_d, BLOCK_V=block_v, GAIN_BITS=gain_bits,
                                              num_warps=warps, enable_fp_fusion=False)
    return points, gains
