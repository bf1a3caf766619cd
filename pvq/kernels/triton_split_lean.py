"""The lean one-row fused product of D = 8 split-order PVQ layers (2 and 3 bits): ``x @ Q'^T``, x ``[1, in]``.

Per vector: two int32 words of codes (a 32-bit funnel shift), the first half's
pulses j from a bucket table on the index's top bits and one compare, two 8-byte reads
of :func:`~pvq.kernels.split_lean.lean_tables`' pair table (offset, divisor,
float32 reciprocal, both leaf offsets), a float32 division, two 8-byte leaf
reads (4 x int8 and the squared norm), the inverse norm from a table of
K^2 + 1 values, the gain level by selects when L <= 4; then eight multiply-adds
with the input. Plain reference:
:func:`~pvq.kernels.split_runtime.split_matmul_reference` (the same float32
weights, fp32 sums in another order). Importing this module needs Triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .split_lean import bucket_shift, lean_supported, lean_tables
from .split_runtime import SplitRuntime
from .triton_kernels import _store_rows, input_split

__all__ = ["split_gemv_lean", "split_gemv_lean_config"]


@triton.jit
def _codes32(words_ptr, n_words, vec, m, CODE_BITS: tl.constexpr):
    """Combined codes (int32, CODE_BITS <= 32) of vectors ``vec``: bits ``[vec w, vec w + w)`` of the words."""
    bit = vec * CODE_BITS
    q = bit >> 5
    s = (bit & 31).to(tl.uint32)
    lo = tl.load(words_ptr + q, mask=m, other=0).to(tl.uint32)
    hi = tl.load(words_ptr + q + 1, mask=m & (q + 1 < n_words), other=0).to(tl.uint32)
    code = (lo >> s) | ((hi << 1) << (31 - s))  # two shifts: no shift by 32 when s = 0
    if CODE_BITS < 32:
        code = code & ((1 << CODE_BITS) - 1)
    return code.to(tl.int32)


@triton.jit
def _lean_decode(words_ptr, n_words, scales_ptr, levels_ptr, bucket_ptr, pair_ptr, leafn_ptr, inv_norm_ptr,
                 vec, m, K: tl.constexpr, G: tl.constexpr, L: tl.constexpr, CODE_BITS: tl.constexpr,
                 SHIFT: tl.constexpr, BUCKETS: tl.constexpr):
    """(leaf a ``[R, C]`` int32 packed 4 x int8, leaf b, multiplier ``[R, C]`` float32, 0 where ``m`` is false)."""
    code = _codes32(words_ptr, n_words, vec, m, CODE_BITS)
    gain = code % L
    r = code // L
    if BUCKETS:
        bucket = tl.load(bucket_ptr + (r >> SHIFT))  # at most one boundary S_8(K, j) per bucket
        j = bucket.to(tl.int32) + (r >= (bucket >> 32).to(tl.int32)).to(tl.int32)
    else:  # K compares against S_8(K, i) (the pair table's low words: scalars, read once): no dependent load
        j = tl.zeros(r.shape, dtype=tl.int32)
        for i in tl.static_range(1, K + 1):
            j += (r >= tl.load(pair_ptr + 2 * i).to(tl.int32)).to(tl.int32)
    lo = tl.load(pair_ptr + 2 * j)  # int64 pairs: no 3-D tensors (their layouts go through shared memory)
    hi = tl.load(pair_ptr + 2 * j + 1)
    base = lo.to(tl.int32)
    div = (lo >> 32).to(tl.int32)
    inv = hi.to(tl.int32).to(tl.float32, bitcast=True)
    leaf_off = (hi >> 32).to(tl.int32)
    rest = r - base
    qa = (rest.to(tl.float32) * inv).to(tl.int32)
    qa = tl.where(qa * div > rest, qa - 1, qa)
    qa = tl.where(rest - qa * div >= div, qa + 1, qa)
    rb = rest - qa * div
    la = tl.load(leafn_ptr + ((leaf_off & 0xFFFF) + qa))
    lb = tl.load(leafn_ptr + ((leaf_off >> 16) + rb))
    wa = la.to(tl.int32)
    wb = lb.to(tl.int32)
    na = (la >> 32).to(tl.int32)
    nb = (lb >> 32).to(tl.int32)
    if L <= 4:
        level = tl.where(gain == 0, tl.load(levels_ptr), tl.load(levels_ptr + 1 % L))
        if L > 2:
            level = tl.where(gain == 2, tl.load(levels_ptr + 2 % L), level)
            level = tl.where(gain == 3, tl.load(levels_ptr + 3 % L), level)
    else:
        level = tl.load(levels_ptr + gain)
    scale = tl.load(scales_ptr + vec // G, mask=m, other=0.0).to(tl.float32)
    mult = (level * scale) * tl.load(inv_norm_ptr + (na + nb))
    return wa, wb, tl.where(m, mult, 0.0)


@triton.jit
def _dot4(acc, w, x_ptr, col, ok):
    """``acc += sum_t coordinate_t(w) * x[col + t]`` for packed leaves ``w [R, C]``, x columns ``col [C]``."""
    for t in tl.static_range(4):
        xt = tl.load(x_ptr + col + t, mask=ok, other=0.0).to(tl.float32)
        acc += ((w << (24 - 8 * t)) >> 24).to(tl.float32) * xt[None, :]
    return acc


@triton.jit
def _split_gemv_lean_kernel(words_ptr, n_words, scales_ptr, levels_ptr, bucket_ptr, pair_ptr, leafn_ptr,
                            inv_norm_ptr, x_ptr, y_ptr, out_features, VPR: tl.constexpr, VPS: tl.constexpr,
                            K: tl.constexpr, G: tl.constexpr, L: tl.constexpr, CODE_BITS: tl.constexpr,
                            SHIFT: tl.constexpr, BUCKETS: tl.constexpr, BLOCK_O: tl.constexpr, NV: tl.constexpr,
                            ATOMIC: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
    row_ok = rows < out_features
    v_start = tl.program_id(1) * VPS
    v_end = tl.minimum(v_start + VPS, VPR)
    acc = tl.zeros([BLOCK_O, NV], dtype=tl.float32)
    for t in range(0, VPS, NV):
        vs = v_start + t + tl.arange(0, NV)
        v_ok = vs < v_end
        m = row_ok[:, None] & v_ok[None, :]
        wa, wb, mult = _lean_decode(words_ptr, n_words, scales_ptr, levels_ptr, bucket_ptr, pair_ptr, leafn_ptr,
                                    inv_norm_ptr, rows[:, None] * VPR + vs[None, :], m, K, G, L, CODE_BITS, SHIFT, BUCKETS)
        part = _dot4(tl.zeros([BLOCK_O, NV], dtype=tl.float32), wa, x_ptr, vs * 8, v_ok)
        part = _dot4(part, wb, x_ptr, vs * 8 + 4, v_ok)
        acc += part * mult
    total = tl.sum(acc, axis=1)[:, None]
    zero = tl.arange(0, 1)
    _store_rows(y_ptr, total, rows, row_ok, zero, zero < 1, out_features, ATOMIC)


def split_gemv_lean_config(rt: SplitRuntime, sms: int = 132) -> dict:
    """16 rows x 16 vectors per step, the input split until about 16 programs per SM (the general
    kernel's setting)."""
    block_o, nv = 16, 16
    return {"block_o": block_o, "nv": nv,
            "split_k": input_split(triton.cdiv(rt.out_features, block_o), rt.in_features // 8, nv, sms)}


def split_gemv_lean(rt: SplitRuntime, x: torch.Tensor, block_o: int | None = None, nv: int | None = None,
                    split_k: int | None = None, buckets: bool = True) -> torch.Tensor:
    """``x @ Q'^T`` float32 ``[1, out]`` for ``x: [1, in]`` of a layer :func:`lean_supported` takes
    (``buckets=False``: the first half's pulses by K compares, as the general kernel, instead of the
    bucket table's dependent load)."""
    if not lean_supported(rt):
        raise ValueError(f"the lean kernel takes D = 8 split layers with N(8, K) < 2^22; got D={rt.dim}, "
                         f"K={rt.pulses} (use split_matmul)")
    if x.dim() != 2 or tuple(x.shape) != (1, rt.in_features):
        raise ValueError(f"split_gemv_lean takes x [1, {rt.in_features}], got {tuple(x.shape)}")
    cfg = split_gemv_lean_config(rt)
    block_o, nv, split_k = block_o or cfg["block_o"], nv or cfg["nv"], split_k or cfg["split_k"]
    if rt.num_vectors * rt.code_bits >= 1 << 31:
        raise ValueError(f"layer of {rt.num_vectors} vectors: its bit offsets pass 2^31 (use split_matmul)")
    bucket_table, pair, leafn = lean_tables(rt.pulses, str(rt.words.device))
    x = x.contiguous()
    vpr = rt.in_features // 8
    vps = triton.cdiv(triton.cdiv(vpr, split_k), nv) * nv
    split_k = triton.cdiv(vpr, vps)
    y = (torch.zeros if split_k > 1 else torch.empty)(1, rt.out_features, dtype=torch.float32, device=x.device)
    _split_gemv_lean_kernel[(triton.cdiv(rt.out_features, block_o), split_k)](
        rt.words, rt.words.numel(), rt.scales, rt.levels, bucket_table, pair, leafn, rt.inverse_norms, x, y,
        rt.out_features, VPR=vpr, VPS=vps, K=rt.pulses, G=rt.group_size, L=rt.num_levels,
        CODE_BITS=rt.code_bits, SHIFT=bucket_shift(rt.pulses), BUCKETS=buckets, BLOCK_O=block_o, NV=nv, ATOMIC=split_k > 1,
    )
    return y
