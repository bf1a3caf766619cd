"""Triton kernels over :class:`~pvq.kernels.split_runtime.SplitRuntime` (split-order PVQ codes).

* :func:`split_decode` - a whole layer to ``Q'`` (float32 or fp16): prefill and
  large batches.
* :func:`split_matmul` - ``x @ Q'^T`` for ``x: [B, in]``, B up to 16: each
  program decodes a tile of ``BLOCK_O`` rows x ``NV`` vectors in registers
  (codes -> the top split compared at once against the offsets row held in
  registers, one float64 division; for D=16 a binary search per half -> one
  P(4, k) table read per 4 weights) and multiplies it leaf by leaf with the
  input: multiply-adds in fp32 for one row, ``tl.dot`` on ``y * m`` in the
  input's dtype for more (fp32 inputs: IEEE fp32 products). The input
  dimension is split over ``SPLIT_K`` programs whose partial sums are added
  atomically. ``Q'`` is never written to memory.

Plain references: :mod:`pvq.kernels.split_runtime` (decode bit-exact in
float32; the matmul to the rounding of ``Q'`` to the input's dtype and fp32 sums).
Importing this module needs Triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .split_runtime import SplitRuntime
from .triton_kernels import _row_block, _store_rows, input_split

__all__ = ["split_decode", "split_matmul", "split_matmul_config"]


@triton.jit
def _read_codes(words_ptr, n_words, vec, mask, CODE_BITS: tl.constexpr):
    """Combined codes (int64) of vectors ``vec`` from the int32 words (two words, three above 32 bits)."""
    bit = vec.to(tl.int64) * CODE_BITS
    q = bit >> 5
    s = (bit & 31).to(tl.uint64)
    lo = tl.load(words_ptr + q, mask=mask, other=0).to(tl.uint32).to(tl.uint64)
    mid = tl.load(words_ptr + q + 1, mask=mask & (q + 1 < n_words), other=0).to(tl.uint32).to(tl.uint64)
    code = (lo | (mid << 32)) >> s
    if CODE_BITS > 32:
        hi = tl.load(words_ptr + q + 2, mask=mask & (q + 2 < n_words), other=0).to(tl.uint32).to(tl.uint64)
        code = code | ((hi << ((64 - s) & 63)) * (s > 0).to(tl.uint64))
    return (code & ((1 << CODE_BITS) - 1)).to(tl.int64)


@triton.jit
def _divmod(rest, div, inv):
    """Exact ``(rest // div, rest % div)`` of non-negative integers below 2^52 from the float64
    reciprocal ``inv = 1 / div``: a truncated product, corrected by one either way."""
    q = (rest.to(tl.float64) * inv).to(rest.dtype)
    q = tl.where(q * div > rest, q - 1, q)
    q = tl.where(rest - q * div >= div, q + 1, q)
    return q, rest - q * div


@triton.jit
def _top_split(r, off_ptr, counts_ptr, inv_ptr, H: tl.constexpr, K: tl.constexpr):
    """The split of P(2H, K) for indices ``r``: every vector holds K pulses, so the offsets
    ``S(K, i)`` are K scalars (read once per program) and the pulses j of the first half are a
    count of K compares in registers; base, divisor and its reciprocal are then read from tables."""
    j = tl.zeros(r.shape, dtype=tl.int32)
    for i in tl.static_range(1, K + 1):
        j += (r >= tl.load(off_ptr + K * (K + 2) + i).to(r.dtype)).to(tl.int32)
    base = tl.load(off_ptr + K * (K + 2) + j).to(r.dtype)
    ra, rb = _divmod(r - base, tl.load(counts_ptr + H * (K + 1) + K - j).to(r.dtype), tl.load(inv_ptr + K - j))
    return j, ra, rb


@triton.jit
def _split(r, k, off_ptr, counts_ptr, inv_ptr, H: tl.constexpr, K: tl.constexpr, STEPS: tl.constexpr):
    """The split of P(2H, k) for per-vector pulse counts ``k``: binary search in the offsets row."""
    row = off_ptr + k * (K + 2)
    lo = tl.zeros(r.shape, dtype=tl.int32)  # S(k, lo) <= r < S(k, hi)
    hi = k + 1
    for _ in tl.static_range(STEPS):
        mid = (lo + hi) // 2
        ok = tl.load(row + mid).to(r.dtype) <= r
        lo = tl.where(ok & (mid < hi), mid, lo)
        hi = tl.where(ok | (mid >= hi), hi, mid)
    rest = r - tl.load(row + lo).to(r.dtype)
    ra, rb = _divmod(rest, tl.load(counts_ptr + H * (K + 1) + (k - lo)).to(r.dtype), tl.load(inv_ptr + (k - lo)))
    return lo, ra, rb


@triton.jit
def _leaf(leaves_ptr, leaf_off_ptr, r, k):
    """Point ``r`` of P(4, k) as one int32 (4 x int8, coordinate t in bits 8t..8t+7): one table read."""
    return tl.load(leaves_ptr + tl.load(leaf_off_ptr + k) + r.to(tl.int64))


@triton.jit
def _coord(word, t: tl.constexpr):
    """Coordinate ``t`` (int32, sign-extended) of packed leaves ``word``."""
    return (word << (24 - 8 * t)) >> 24


@triton.jit
def _coords(word):
    """All four coordinates ``[R, C, 4]`` int32 of packed leaves ``word: [R, C]``."""
    shift = 24 - 8 * tl.arange(0, 4)
    return (word[:, :, None] << shift[None, None, :]) >> 24


@triton.jit
def _norm2(word):
    n = tl.zeros(word.shape, dtype=tl.int32)
    for t in tl.static_range(4):
        c = _coord(word, t)
        n += c * c
    return n


@triton.jit
def _decode_vectors(words_ptr, n_words, scales_ptr, levels_ptr, counts_ptr, off16_ptr, off8_ptr, leaf_off_ptr,
                    leaves_ptr, inv4_ptr, inv8_ptr, inv_norm_ptr, vec, m, D: tl.constexpr, K: tl.constexpr,
                    G: tl.constexpr, L: tl.constexpr, CODE_BITS: tl.constexpr,
                    WIDE: tl.constexpr, WIDE_HALF: tl.constexpr, STEPS: tl.constexpr):
    """Vectors ``vec: [R, C]`` as D/4 packed leaves ``[R, C]`` int32 (coordinates ``4 s .. 4 s + 3``;
    unused leaves repeat the first) and the multiplier ``[R, C]`` float32, 0 where ``m`` is false:
    the weights are ``coordinates * mult``, ``mult = (level * scale) * (1 / sqrt(|y|^2))`` (table)."""
    code = _read_codes(words_ptr, n_words, vec, m, CODE_BITS)
    gain = (code % L).to(tl.int32)
    r = code // L
    if not WIDE:
        r = r.to(tl.int32)
    if D == 4:
        w0 = _leaf(leaves_ptr, leaf_off_ptr, r, tl.full(vec.shape, K, tl.int32))
        w1 = w0
        w2 = w0
        w3 = w0
        norm2 = _norm2(w0)
    elif D == 8:
        j, ra, rb = _top_split(r, off8_ptr, counts_ptr, inv4_ptr, 4, K)
        w0 = _leaf(leaves_ptr, leaf_off_ptr, ra, j)
        w1 = _leaf(leaves_ptr, leaf_off_ptr, rb, K - j)
        w2 = w0
        w3 = w0
        norm2 = _norm2(w0) + _norm2(w1)
    else:
        j, ra, rb = _top_split(r, off16_ptr, counts_ptr, inv8_ptr, 8, K)
        if not WIDE_HALF:
            ra = ra.to(tl.int32)
            rb = rb.to(tl.int32)
        ja, raa, rab = _split(ra, j, off8_ptr, counts_ptr, inv4_ptr, 4, K, STEPS)
        jb, rba, rbb = _split(rb, K - j, off8_ptr, counts_ptr, inv4_ptr, 4, K, STEPS)
        w0 = _leaf(leaves_ptr, leaf_off_ptr, raa, ja)
        w1 = _leaf(leaves_ptr, leaf_off_ptr, rab, j - ja)
        w2 = _leaf(leaves_ptr, leaf_off_ptr, rba, jb)
        w3 = _leaf(leaves_ptr, leaf_off_ptr, rbb, K - j - jb)
        norm2 = _norm2(w0) + _norm2(w1) + _norm2(w2) + _norm2(w3)
    scale = tl.load(scales_ptr + vec // G, mask=m, other=0.0).to(tl.float32)
    level = tl.load(levels_ptr + gain, mask=m, other=0.0)
    mult = (level * scale) * tl.load(inv_norm_ptr + norm2)
    return w0, w1, w2, w3, tl.where(m, mult, 0.0)


@triton.jit
def _store_leaf(out_ptr, w, mult, vec, m, s: tl.constexpr, D: tl.constexpr):
    dest = vec.to(tl.int64)[:, :, None] * D + s * 4 + tl.arange(0, 4)[None, None, :]
    tl.store(out_ptr + dest, (_coords(w).to(tl.float32) * mult[:, :, None]).to(out_ptr.dtype.element_ty),
             mask=m[:, :, None])


@triton.jit
def _split_decode_kernel(words_ptr, n_words, scales_ptr, levels_ptr, counts_ptr, off16_ptr, off8_ptr,
                         leaf_off_ptr, leaves_ptr, inv4_ptr, inv8_ptr, inv_norm_ptr, out_ptr, n_vectors,
                         D: tl.constexpr, K: tl.constexpr, G: tl.constexpr, L: tl.constexpr,
                         CODE_BITS: tl.constexpr, WIDE: tl.constexpr, WIDE_HALF: tl.constexpr,
                         STEPS: tl.constexpr, BLOCK: tl.constexpr):
    vec = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK))[:, None]
    m = vec < n_vectors
    c0, c1, c2, c3, mult = _decode_vectors(words_ptr, n_words, scales_ptr, levels_ptr, counts_ptr, off16_ptr,
                                           off8_ptr, leaf_off_ptr, leaves_ptr, inv4_ptr, inv8_ptr, inv_norm_ptr, vec, m, D, K,
                                           G, L, CODE_BITS,
                                           WIDE, WIDE_HALF, STEPS)
    _store_leaf(out_ptr, c0, mult, vec, m, 0, D)
    if D >= 8:
        _store_leaf(out_ptr, c1, mult, vec, m, 1, D)
    if D == 16:
        _store_leaf(out_ptr, c2, mult, vec, m, 2, D)
        _store_leaf(out_ptr, c3, mult, vec, m, 3, D)


def _args(rt: SplitRuntime):
    return (rt.words, rt.words.numel(), rt.scales, rt.levels, rt.counts, rt.offsets16, rt.offsets8,
            rt.leaf_offsets, rt.leaves, rt.inverse4, rt.inverse8, rt.inverse_norms)


def _consts(rt: SplitRuntime) -> dict:
    """The kernels' compile-time constants of a layer (from the runtime's host-side sizes: no device sync)."""
    return dict(D=rt.dim, K=rt.pulses, G=rt.group_size,
                L=rt.num_levels, CODE_BITS=rt.code_bits, WIDE=rt.wide, WIDE_HALF=rt.wide_half,
                STEPS=max(1, (rt.pulses + 1).bit_length()))


def split_decode(rt: SplitRuntime, dtype: torch.dtype = torch.float32, block: int = 128) -> torch.Tensor:
    """``Q'`` ``[out, in]`` in ``dtype`` (float32: bit-identical to the reference)."""
    n = rt.num_vectors
    out = torch.empty(n * rt.dim, dtype=dtype, device=rt.words.device)
    _split_decode_kernel[(triton.cdiv(n, block),)](*_args(rt), out, n, **_consts(rt), BLOCK=block)
    return out.view(rt.out_features, rt.in_features)


@triton.jit
def _leaf_product(acc, w, mult, x_ptr, bs, b_ok, v0, v_end, in_features, s: tl.constexpr, D: tl.constexpr,
                  BLOCK_O: tl.constexpr, NV: tl.constexpr, BP: tl.constexpr):
    """``acc +=`` leaf s of the tile (vectors v0 .. v0 + NV of the row block) times the input. Batch 1:
    per-vector sums ``acc [BLOCK_O, NV]`` by multiply-adds, one coordinate at a time (the multiplier is
    applied by the caller); more rows: ``tl.dot`` of ``y * mult`` with the input into ``acc [BLOCK_O, BP]``."""
    if BP == 1:
        vs = v0 + tl.arange(0, NV)
        for t in tl.static_range(4):
            xt = tl.load(x_ptr + vs * D + s * 4 + t, mask=vs < v_end, other=0.0).to(tl.float32)
            acc += _coord(w, t).to(tl.float32) * xt[None, :]
    else:
        q = tl.reshape(_coords(w).to(tl.float32) * mult[:, :, None], (BLOCK_O, NV * 4)).to(x_ptr.dtype.element_ty)
        t = tl.arange(0, NV * 4)
        v = v0 + t // 4
        xs = tl.load(x_ptr + bs[None, :] * in_features + (v * D + s * 4 + t % 4)[:, None],
                     mask=(v < v_end)[:, None] & b_ok[None, :], other=0.0)
        if x_ptr.dtype.element_ty == tl.float32:
            acc += tl.dot(q, xs, input_precision="ieee")
        else:
            acc += tl.dot(q, xs)
    return acc


@triton.jit
def _split_matmul_kernel(words_ptr, n_words, scales_ptr, levels_ptr, counts_ptr, off16_ptr, off8_ptr,
                         leaf_off_ptr, leaves_ptr, inv4_ptr, inv8_ptr, inv_norm_ptr, x_ptr, y_ptr, out_features,
                         in_features, batch, VPR: tl.constexpr, VPS: tl.constexpr, D: tl.constexpr, K: tl.constexpr,
                         G: tl.constexpr, L: tl.constexpr, CODE_BITS: tl.constexpr,
                         WIDE: tl.constexpr, WIDE_HALF: tl.constexpr, STEPS: tl.constexpr, BLOCK_O: tl.constexpr,
                         NV: tl.constexpr, BP: tl.constexpr, ATOMIC: tl.constexpr):
    rows, row_ok, bs, b_ok = _row_block(out_features, batch, BLOCK_O, BP)
    v_start = tl.program_id(1) * VPS
    v_end = tl.minimum(v_start + VPS, VPR)
    acc = tl.zeros([BLOCK_O, NV if BP == 1 else BP], dtype=tl.float32)
    for t in range(0, VPS, NV):  # constexpr bounds (the interpreter needs them)
        v0 = v_start + t
        vs = v0 + tl.arange(0, NV)
        m = row_ok[:, None] & (vs < v_end)[None, :]
        w0, w1, w2, w3, mult = _decode_vectors(
            words_ptr, n_words, scales_ptr, levels_ptr, counts_ptr, off16_ptr, off8_ptr, leaf_off_ptr, leaves_ptr,
            inv4_ptr, inv8_ptr, inv_norm_ptr, rows[:, None] * VPR + vs[None, :], m, D, K, G, L, CODE_BITS,
            WIDE, WIDE_HALF, STEPS)
        part = tl.zeros([BLOCK_O, NV], dtype=tl.float32) if BP == 1 else acc
        part = _leaf_product(part, w0, mult, x_ptr, bs, b_ok, v0, v_end, in_features, 0, D, BLOCK_O, NV, BP)
        if D >= 8:
            part = _leaf_product(part, w1, mult, x_ptr, bs, b_ok, v0, v_end, in_features, 1, D, BLOCK_O, NV, BP)
        if D == 16:
            part = _leaf_product(part, w2, mult, x_ptr, bs, b_ok, v0, v_end, in_features, 2, D, BLOCK_O, NV, BP)
            part = _leaf_product(part, w3, mult, x_ptr, bs, b_ok, v0, v_end, in_features, 3, D, BLOCK_O, NV, BP)
        if BP == 1:
            acc += part * mult  # the per-vector multiplier, once per vector
        else:
            acc = part
    if BP == 1:
        total = tl.sum(acc, axis=1)[:, None]
    else:
        total = acc
    _store_rows(y_ptr, total, rows, row_ok, bs, b_ok, out_features, ATOMIC)


def split_matmul_config(rt: SplitRuntime, batch: int, sms: int = 132) -> dict:
    """Tile sizes and the split of the input dimension for a layer and batch: 16 rows x 128 weights per
    step, the input split until about 16 programs per SM (the best of 24 settings for 11008x4096 at
    3 bits on an H100, batch 1 and 16: ``benchmarks/kernel_speed.py --sweep``)."""
    block_o = 16
    nv = max(4, 128 // rt.dim)
    split = input_split(triton.cdiv(rt.out_features, block_o), rt.in_features // rt.dim, nv, sms)
    return {"block_o": block_o, "nv": nv, "split_k": split}


def split_matmul(rt: SplitRuntime, x: torch.Tensor, block_o: int | None = None, nv: int | None = None,
                 split_k: int | None = None) -> torch.Tensor:
    """``x @ Q'^T`` float32 ``[B, out]`` for ``x: [B, in]``, B <= 16, decoding in registers
    (``nv >= 4`` vectors per step: ``tl.dot`` needs 16 columns per leaf)."""
    if x.dim() != 2 or x.shape[1] != rt.in_features or x.shape[0] > 16:
        raise ValueError(f"split_matmul takes x [B <= 16, {rt.in_features}], got {tuple(x.shape)}")
    cfg = split_matmul_config(rt, x.shape[0])
    block_o = block_o or cfg["block_o"]
    nv = max(4, nv or cfg["nv"])
    split_k = split_k or cfg["split_k"]
    x = x.contiguous()
    batch = x.shape[0]
    vpr = rt.in_features // rt.dim
    vps = triton.cdiv(triton.cdiv(vpr, split_k), nv) * nv
    split_k = triton.cdiv(vpr, vps)
    y = (torch.zeros if split_k > 1 else torch.empty)(batch, rt.out_features, dtype=torch.float32, device=x.device)
    _split_matmul_kernel[(triton.cdiv(rt.out_features, block_o), split_k)](
        *_args(rt), x, y, rt.out_features, rt.in_features, batch, VPR=vpr, VPS=vps, **_consts(rt),
        BLOCK_O=block_o, NV=nv, BP=1 if batch == 1 else 16, ATOMIC=split_k > 1,
    )
    return y
