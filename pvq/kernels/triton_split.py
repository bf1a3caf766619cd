"""Triton kernels over :class:`~pvq.kernels.split_runtime.SplitRuntime` (split-order PVQ codes).

* :func:`split_decode` - a whole layer to ``Q'`` (float32 or fp16): prefill and
  large batches.
* :func:`split_matmul` - ``x @ Q'^T`` for ``x: [B, in]``, B up to 16: each
  program decodes a tile of ``BLOCK_O`` rows x ``NV`` vectors in registers
  (codes -> one search and one division per split level -> P(4, k) table
  lookups -> ``y * m`` in the input's dtype) and multiplies it with ``tl.dot``
  (fp32 inputs: IEEE fp32 products); the input
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
def _split(r, k, offsets_ptr, counts_ptr, H: tl.constexpr, K: tl.constexpr, STEPS: tl.constexpr):
    """One split level: index ``r`` of P(2H, k) -> (pulses j of the first half, its index, the second's)."""
    row = offsets_ptr + k * (K + 2)
    lo = tl.zeros(r.shape, dtype=tl.int32)  # S(k, lo) <= r < S(k, hi)
    hi = k + 1
    for _ in tl.static_range(STEPS):
        mid = (lo + hi) // 2
        ok = tl.load(row + mid).to(r.dtype) <= r
        lo = tl.where(ok & (mid < hi), mid, lo)
        hi = tl.where(ok | (mid >= hi), hi, mid)
    rest = r - tl.load(row + lo).to(r.dtype)
    div = tl.load(counts_ptr + H * (K + 1) + (k - lo)).to(r.dtype)
    ra = rest // div
    return lo, ra, rest - ra * div


@triton.jit
def _leaf(leaves_ptr, leaf_off_ptr, r, k):
    """Coordinates ``[..., 4]`` int32 of P(4, k) point ``r``."""
    word = tl.load(leaves_ptr + tl.load(leaf_off_ptr + k) + r.to(tl.int64))
    shift = 24 - 8 * tl.arange(0, 4)
    return (word[:, :, None] << shift[None, None, :]) >> 24


@triton.jit
def _decode_tile(words_ptr, n_words, scales_ptr, levels_ptr, counts_ptr, off16_ptr, off8_ptr, leaf_off_ptr,
                 leaves_ptr, vec, m, R: tl.constexpr, C: tl.constexpr, D: tl.constexpr, K: tl.constexpr,
                 G: tl.constexpr, L: tl.constexpr, CODE_BITS: tl.constexpr, WIDE: tl.constexpr,
                 WIDE_HALF: tl.constexpr, STEPS: tl.constexpr):
    """Decoded weights ``[R, C, D]`` float32 of vectors ``vec: [R, C]`` (coordinates in the kernel
    order of :func:`_column`), zeros where ``m`` is false."""
    code = _read_codes(words_ptr, n_words, vec, m, CODE_BITS)
    gain = (code % L).to(tl.int32)
    r = code // L
    if not WIDE:
        r = r.to(tl.int32)
    k = tl.full(vec.shape, K, tl.int32)
    if D == 4:
        y = _leaf(leaves_ptr, leaf_off_ptr, r, k)
    elif D == 8:
        j, ra, rb = _split(r, k, off8_ptr, counts_ptr, 4, K, STEPS)
        y = tl.join(_leaf(leaves_ptr, leaf_off_ptr, ra, j), _leaf(leaves_ptr, leaf_off_ptr, rb, k - j))
    else:
        j, ra, rb = _split(r, k, off16_ptr, counts_ptr, 8, K, STEPS)
        if not WIDE_HALF:
            ra = ra.to(tl.int32)
            rb = rb.to(tl.int32)
        ja, raa, rab = _split(ra, j, off8_ptr, counts_ptr, 4, K, STEPS)
        jb, rba, rbb = _split(rb, k - j, off8_ptr, counts_ptr, 4, K, STEPS)
        first = tl.join(_leaf(leaves_ptr, leaf_off_ptr, raa, ja), _leaf(leaves_ptr, leaf_off_ptr, rab, j - ja))
        second = tl.join(_leaf(leaves_ptr, leaf_off_ptr, rba, jb), _leaf(leaves_ptr, leaf_off_ptr, rbb, k - j - jb))
        y = tl.join(first, second)
    y = tl.reshape(y, (R, C, D))
    yf = y.to(tl.float32)
    norm2 = tl.sum(yf * yf, axis=2)
    scale = tl.load(scales_ptr + vec // G, mask=m, other=0.0).to(tl.float32)
    level = tl.load(levels_ptr + gain, mask=m, other=0.0)
    mult = tl.div_rn(level * scale, tl.sqrt_rn(tl.maximum(norm2, 1.0)))
    return yf * tl.where(m, mult, 0.0)[:, :, None]


@triton.jit
def _column(c, D: tl.constexpr):
    """Input column (within a run of vectors) of position ``c`` of the flattened decoded tile: the
    joins above put leaf ``s``, coordinate ``t`` at ``t * (D / 4) + bit-reversed s``."""
    v = c // D
    w = c % D
    if D == 4:
        col = w
    elif D == 8:
        col = (w % 2) * 4 + w // 2
    else:
        col = ((w % 2) * 2 + (w // 2) % 2) * 4 + w // 4
    return v * D + col


@triton.jit
def _split_decode_kernel(words_ptr, n_words, scales_ptr, levels_ptr, counts_ptr, off16_ptr, off8_ptr,
                         leaf_off_ptr, leaves_ptr, out_ptr, n_vectors,
                         D: tl.constexpr, K: tl.constexpr, G: tl.constexpr, L: tl.constexpr,
                         CODE_BITS: tl.constexpr, WIDE: tl.constexpr, WIDE_HALF: tl.constexpr,
                         STEPS: tl.constexpr, BLOCK: tl.constexpr):
    vec = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK))[:, None]
    m = vec < n_vectors
    w = _decode_tile(words_ptr, n_words, scales_ptr, levels_ptr, counts_ptr, off16_ptr, off8_ptr, leaf_off_ptr,
                     leaves_ptr, vec, m, BLOCK, 1, D, K, G, L, CODE_BITS, WIDE, WIDE_HALF, STEPS)
    c = tl.arange(0, BLOCK * D)
    dest = tl.program_id(0).to(tl.int64) * BLOCK * D + _column(c, D)
    tl.store(out_ptr + dest, tl.reshape(w, (BLOCK * D,)).to(out_ptr.dtype.element_ty),
             mask=dest < n_vectors.to(tl.int64) * D)


def _args(rt: SplitRuntime):
    return (rt.words, rt.words.numel(), rt.scales, rt.levels, rt.counts, rt.offsets16, rt.offsets8,
            rt.leaf_offsets, rt.leaves)


def _consts(rt: SplitRuntime) -> dict:
    counts = rt.counts[:, rt.pulses].tolist()  # N(d, K)
    return dict(D=rt.dim, K=rt.pulses, G=rt.group_size, L=rt.num_levels, CODE_BITS=rt.code_bits,
                WIDE=counts[rt.dim] >= 1 << 31, WIDE_HALF=counts[rt.dim // 2] >= 1 << 31,
                STEPS=max(1, (rt.pulses + 1).bit_length()))


def split_decode(rt: SplitRuntime, dtype: torch.dtype = torch.float32, block: int = 64) -> torch.Tensor:
    """``Q'`` ``[out, in]`` in ``dtype`` (float32: bit-identical to the reference)."""
    n = rt.num_vectors
    out = torch.empty(n * rt.dim, dtype=dtype, device=rt.words.device)
    _split_decode_kernel[(triton.cdiv(n, block),)](*_args(rt), out, n, **_consts(rt), BLOCK=block)
    return out.view(rt.out_features, rt.in_features)


@triton.jit
def _split_matmul_kernel(words_ptr, n_words, scales_ptr, levels_ptr, counts_ptr, off16_ptr, off8_ptr,
                         leaf_off_ptr, leaves_ptr, x_ptr, y_ptr, out_features, in_features, batch,
                         VPR: tl.constexpr, VPS: tl.constexpr, D: tl.constexpr, K: tl.constexpr, G: tl.constexpr,
                         L: tl.constexpr, CODE_BITS: tl.constexpr, WIDE: tl.constexpr, WIDE_HALF: tl.constexpr,
                         STEPS: tl.constexpr, BLOCK_O: tl.constexpr, NV: tl.constexpr, BP: tl.constexpr,
                         ATOMIC: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
    row_ok = rows < out_features
    bs = tl.arange(0, BP)
    b_ok = bs < batch
    c = tl.arange(0, NV * D)
    cols = _column(c, D)
    v_start = tl.program_id(1) * VPS
    v_end = tl.minimum(v_start + VPS, VPR)
    acc = tl.zeros([BLOCK_O, BP], dtype=tl.float32)
    for t in range(0, VPS, NV):  # constexpr bounds (the interpreter needs them)
        v0 = v_start + t
        vs = v0 + tl.arange(0, NV)
        m = row_ok[:, None] & (vs < v_end)[None, :]
        vec = rows[:, None] * VPR + vs[None, :]
        w = _decode_tile(words_ptr, n_words, scales_ptr, levels_ptr, counts_ptr, off16_ptr, off8_ptr,
                         leaf_off_ptr, leaves_ptr, vec, m, BLOCK_O, NV, D, K, G, L, CODE_BITS, WIDE, WIDE_HALF,
                         STEPS)
        w = tl.reshape(w, (BLOCK_O, NV * D)).to(x_ptr.dtype.element_ty)  # Q' in the input's dtype
        xcol = v0 * D + cols
        x = tl.load(x_ptr + bs[None, :] * in_features + xcol[:, None],
                    mask=(xcol < v_end * D)[:, None] & b_ok[None, :], other=0.0)
        if x_ptr.dtype.element_ty == tl.float32:
            acc += tl.dot(w, x, input_precision="ieee")
        else:
            acc += tl.dot(w, x)
    out = y_ptr + bs[None, :] * out_features + rows[:, None]
    ok = row_ok[:, None] & b_ok[None, :]
    if ATOMIC:
        tl.atomic_add(out, acc, mask=ok)
    else:
        tl.store(out, acc, mask=ok)


def split_matmul_config(rt: SplitRuntime, batch: int, sms: int = 132) -> dict:
    """Tile sizes and the split of the input dimension for a layer and batch (measured on an H100:
    ``benchmarks/kernels.py --sweep``)."""
    block_o = 32
    nv = max(2, 64 // rt.dim)  # 64 weights of a row per step
    vpr = rt.in_features // rt.dim
    row_blocks = triton.cdiv(rt.out_features, block_o)
    split = 1
    while row_blocks * split < 4 * sms and vpr // (split * 2) >= 4 * nv:
        split *= 2
    return {"block_o": block_o, "nv": nv, "split_k": split}


def split_matmul(rt: SplitRuntime, x: torch.Tensor, block_o: int | None = None, nv: int | None = None,
                 split_k: int | None = None) -> torch.Tensor:
    """``x @ Q'^T`` float32 ``[B, out]`` for ``x: [B, in]``, B <= 16, decoding in registers."""
    if x.dim() != 2 or x.shape[1] != rt.in_features or x.shape[0] > 16:
        raise ValueError(f"split_matmul takes x [B <= 16, {rt.in_features}], got {tuple(x.shape)}")
    cfg = split_matmul_config(rt, x.shape[0])
    block_o = block_o or cfg["block_o"]
    nv = nv or cfg["nv"]
    split_k = split_k or cfg["split_k"]
    x = x.contiguous()
    batch = x.shape[0]
    vpr = rt.in_features // rt.dim
    vps = triton.cdiv(triton.cdiv(vpr, split_k), nv) * nv
    split_k = triton.cdiv(vpr, vps)
    y = (torch.zeros if split_k > 1 else torch.empty)(batch, rt.out_features, dtype=torch.float32, device=x.device)
    _split_matmul_kernel[(triton.cdiv(rt.out_features, block_o), split_k)](
        *_args(rt), x, y, rt.out_features, rt.in_features, batch, VPR=vpr, VPS=vps, **_consts(rt),
        BLOCK_O=block_o, NV=nv, BP=16, ATOMIC=split_k > 1,
    )
    return y
