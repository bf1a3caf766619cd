"""Triton kernels over the runtime layouts of :mod:`pvq.kernels.runtime`.

* :func:`pyramid_decode` - a whole PVQ layer to ``Q'`` (float32/fp16): for
  prefill and large batches.
* :func:`pyramid_matmul` - ``x @ Q'^T`` for ``x: [B, in]``, B up to 16, decoding
  the codes in registers (``Q'`` is never written to memory): per tile of
  ``BLOCK_O`` rows and ``NV`` vectors, the unrank walks the D coordinates
  (binary search of each magnitude in the count tables), accumulating ``y . x``
  and ``|y|^2`` per vector; the vector's multiplier ``level * scale / |y|``
  is applied once at the end.
* :func:`table_decode` / :func:`table_matmul` - the same for E8 layers (one or
  two stages of table lookups), so PVQ's decode is compared with a codebook
  decode in the same run.

Each has a plain PyTorch reference in :mod:`pvq.kernels.runtime` computing the
same float32 operations; ``tests/kernels`` compares them on CPU under
``TRITON_INTERPRET=1``. Importing this module needs Triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .runtime import PyramidRuntime, TableRuntime

__all__ = ["pyramid_decode", "pyramid_matmul", "table_decode", "table_matmul"]


# ---------------------------------------------------------------- PVQ


@triton.jit
def _pvq_codes(codes_ptr, n_bytes, vec, mask, CODE_BITS: tl.constexpr):
    """Combined int64 codes of the vectors ``vec`` from the stored bitstream (8 bytes from the byte
    holding the code's first bit, shifted and masked; CODE_BITS <= 56)."""
    bit = vec.to(tl.int64) * CODE_BITS
    first = bit >> 3
    word = tl.zeros(vec.shape, dtype=tl.int64)
    for b in tl.static_range(8):
        ok = mask & (first + b < n_bytes)
        byte = tl.load(codes_ptr + first + b, mask=ok, other=0).to(tl.int64)
        word = word | (byte << (8 * b))
    return (word >> (bit & 7)) & ((1 << CODE_BITS) - 1)


@triton.jit
def _pvq_coordinate(r, k, counts_ptr, cum_ptr, nd, K1: tl.constexpr, STEPS: tl.constexpr):
    """One unrank step at a position with ``nd`` coordinates left: (value, new r, new k)."""
    n_prev = tl.load(counts_ptr + (nd - 1) * K1 + k)
    is_zero = r < n_prev
    need = tl.load(counts_ptr + nd * K1 + k) - r
    lo = tl.full(r.shape, 1, tl.int64)
    hi = k + 1
    for _ in tl.static_range(STEPS):
        mid = (lo + hi) // 2
        valid = mid < hi
        rest = tl.maximum(k - mid, 0)
        ok = valid & (2 * tl.load(cum_ptr + (nd - 1) * K1 + rest) >= need)
        lo = tl.where(ok, mid, lo)
        hi = tl.where(valid & (~ok), mid, hi)
    a = tl.where(is_zero, 0, lo)
    after = tl.maximum(k - a, 0)
    offset = tl.load(counts_ptr + nd * K1 + k) - 2 * tl.load(cum_ptr + (nd - 1) * K1 + after)
    r = r - tl.where(is_zero, 0, offset)
    block = tl.load(counts_ptr + (nd - 1) * K1 + after)
    neg = (~is_zero) & (r >= block)
    r = r - tl.where(neg, block, 0)
    return tl.where(neg, -a, a), r, k - a


@triton.jit
def _pvq_decode_kernel(codes_ptr, n_bytes, scales_ptr, levels_ptr, counts_ptr, cum_ptr, out_ptr, n_vectors,
                       D: tl.constexpr, K: tl.constexpr, G: tl.constexpr, L: tl.constexpr,
                       CODE_BITS: tl.constexpr, STEPS: tl.constexpr, BLOCK: tl.constexpr):
    vec = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = vec < n_vectors
    code = _pvq_codes(codes_ptr, n_bytes, vec, mask, CODE_BITS)
    gain = code % L
    r = code // L
    k = tl.full([BLOCK], K, tl.int64)
    norm2 = tl.zeros([BLOCK], dtype=tl.float32)
    for j in tl.static_range(D):
        y, r, k = _pvq_coordinate(r, k, counts_ptr, cum_ptr, D - j, K + 1, STEPS)
        yf = y.to(tl.float32)
        norm2 += yf * yf
        tl.store(out_ptr + vec * D + j, yf, mask=mask)  # the integer point, scaled below
    # the multiplier in float64 (correctly rounded everywhere), then rounded once to float32
    scale = tl.load(scales_ptr + vec // G, mask=mask, other=0.0).to(tl.float64)
    level = tl.load(levels_ptr + gain, mask=mask, other=0.0).to(tl.float64)
    mult = (level * scale / tl.sqrt(norm2.to(tl.float64))).to(tl.float32)
    for j in tl.static_range(D):
        yf = tl.load(out_ptr + vec * D + j, mask=mask, other=0.0)
        tl.store(out_ptr + vec * D + j, yf * mult, mask=mask)


def _steps(pulses: int) -> int:
    return max(1, (pulses + 1).bit_length())


def pyramid_decode(rt: PyramidRuntime, dtype: torch.dtype = torch.float32, block: int = 128) -> torch.Tensor:
    """``Q'`` ``[out, in]`` of a :class:`PyramidRuntime` in ``dtype`` (float32: bit-identical to the reference)."""
    n = rt.out_features * rt.in_features // rt.dim
    out = torch.empty(n * rt.dim, dtype=torch.float32, device=rt.codes.device)
    _pvq_decode_kernel[(triton.cdiv(n, block),)](
        rt.codes, rt.codes.numel(), rt.scales, rt.levels, rt.counts, rt.cumulative, out, n,
        D=rt.dim, K=rt.pulses, G=rt.group_size, L=rt.num_levels, CODE_BITS=rt.code_bits,
        STEPS=_steps(rt.pulses), BLOCK=block,
    )
    return out.view(rt.out_features, rt.in_features).to(dtype)


def input_split(row_blocks: int, steps: int, per_step: int, sms: int = 132, per_sm: int = 16) -> int:
    """Programs over the input dimension (a power of two): doubled until about ``per_sm`` programs per SM
    or until a program would take fewer than two steps of ``per_step`` of the ``steps`` units."""
    split = 1
    while row_blocks * split < per_sm * sms and steps // (split * 2) >= 2 * per_step:
        split *= 2
    return split


@triton.jit
def _row_block(out_features, batch, BLOCK_O: tl.constexpr, BP: tl.constexpr):
    """This program's output rows and the batch rows of a fused matmul: (rows, row_ok, bs, b_ok)."""
    rows = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
    bs = tl.arange(0, BP)
    return rows, rows < out_features, bs, bs < batch


@triton.jit
def _store_rows(y_ptr, acc, rows, row_ok, bs, b_ok, out_features, ATOMIC: tl.constexpr):
    """``y[b, row] = acc`` (``+=`` atomically when the input dimension is split over programs)."""
    out = y_ptr + bs[None, :] * out_features + rows[:, None]
    ok = row_ok[:, None] & b_ok[None, :]
    if ATOMIC:
        tl.atomic_add(out, acc, mask=ok)
    else:
        tl.store(out, acc, mask=ok)


@triton.jit
def _tile(rows, row_ok, v0, NV: tl.constexpr, VPR: tl.constexpr):
    """Vectors ``v0 .. v0 + NV`` of a row block: (vs, v_ok [NV], mask and vector ids [BLOCK_O, NV])."""
    vs = v0 + tl.arange(0, NV)
    v_ok = vs < VPR
    return vs, v_ok, row_ok[:, None] & v_ok[None, :], rows[:, None] * VPR + vs[None, :]


@triton.jit
def _x_column(x_ptr, bs, b_ok, vs, v_ok, j, in_features, D: tl.constexpr):
    """Coordinate ``j`` of input vectors ``vs`` for every batch row: ``[NV, BP]`` float32."""
    return tl.load(x_ptr + bs[None, :] * in_features + (vs[:, None] * D + j),
                   mask=v_ok[:, None] & b_ok[None, :], other=0.0).to(tl.float32)


@triton.jit
def _pvq_matmul_kernel(codes_ptr, n_bytes, scales_ptr, levels_ptr, counts_ptr, cum_ptr, x_ptr, y_ptr,
                       out_features, in_features, batch, VPR: tl.constexpr,
                       D: tl.constexpr, K: tl.constexpr, G: tl.constexpr, L: tl.constexpr,
                       CODE_BITS: tl.constexpr, STEPS: tl.constexpr,
                       BLOCK_O: tl.constexpr, NV: tl.constexpr, BP: tl.constexpr):
    rows, row_ok, bs, b_ok = _row_block(out_features, batch, BLOCK_O, BP)
    acc = tl.zeros([BLOCK_O, BP], dtype=tl.float32)  # VPR: vectors per row
    for v0 in range(0, VPR, NV):
        vs, v_ok, m, vec = _tile(rows, row_ok, v0, NV, VPR)
        code = _pvq_codes(codes_ptr, n_bytes, vec, m, CODE_BITS)
        gain = code % L
        r = code // L
        k = tl.full([BLOCK_O, NV], K, tl.int64)
        norm2 = tl.zeros([BLOCK_O, NV], dtype=tl.float32)
        dot = tl.zeros([BLOCK_O, NV, BP], dtype=tl.float32)
        for j in tl.static_range(D):
            y, r, k = _pvq_coordinate(r, k, counts_ptr, cum_ptr, D - j, K + 1, STEPS)
            yf = y.to(tl.float32)
            norm2 += yf * yf
            dot += yf[:, :, None] * _x_column(x_ptr, bs, b_ok, vs, v_ok, j, in_features, D)[None, :, :]
        scale = tl.load(scales_ptr + vec // G, mask=m, other=0.0).to(tl.float32)
        level = tl.load(levels_ptr + gain, mask=m, other=0.0)
        mult = tl.where(m, level * scale / tl.sqrt(tl.maximum(norm2, 1.0)), 0.0)
        acc += tl.sum(dot * mult[:, :, None], axis=1)
    _store_rows(y_ptr, acc, rows, row_ok, bs, b_ok, out_features, False)


def _bp(batch: int) -> int:
    return max(1, triton.next_power_of_2(batch))


def pyramid_matmul(rt: PyramidRuntime, x: torch.Tensor, block_o: int = 16, nv: int = 8) -> torch.Tensor:
    """``x @ Q'^T`` float32 ``[B, out]`` for ``x: [B, in]``, B <= 16, decoding in registers."""
    if x.dim() != 2 or x.shape[1] != rt.in_features or x.shape[0] > 16:
        raise ValueError(f"pyramid_matmul takes x [B <= 16, {rt.in_features}], got {tuple(x.shape)}")
    x = x.contiguous()
    batch = x.shape[0]
    y = torch.empty(batch, rt.out_features, dtype=torch.float32, device=x.device)
    _pvq_matmul_kernel[(triton.cdiv(rt.out_features, block_o),)](
        rt.codes, rt.codes.numel(), rt.scales, rt.levels, rt.counts, rt.cumulative, x, y, rt.out_features,
        rt.in_features, batch, VPR=rt.in_features // rt.dim,
        D=rt.dim, K=rt.pulses, G=rt.group_size, L=rt.num_levels, CODE_BITS=rt.code_bits,
        STEPS=_steps(rt.pulses), BLOCK_O=block_o, NV=nv, BP=_bp(batch),
    )
    return y


# ---------------------------------------------------------------- E8 tables


@triton.jit
def _table_value(codes_ptr, table_ptr, vec, m, j, MASK: tl.constexpr):
    code = tl.load(codes_ptr + vec, mask=m, other=0).to(tl.int32) & MASK
    return tl.load(table_ptr + code * 8 + j, mask=m, other=0.0).to(tl.float32)


@triton.jit
def _table_decode_kernel(c0_ptr, t0_ptr, c1_ptr, t1_ptr, g1, scales_ptr, out_ptr, n_vectors,
                         G: tl.constexpr, STAGES: tl.constexpr, MASK0: tl.constexpr, MASK1: tl.constexpr,
                         BLOCK: tl.constexpr):
    vec = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = vec < n_vectors
    scale = tl.load(scales_ptr + vec // G, mask=m, other=0.0).to(tl.float32)
    for j in tl.static_range(8):
        w = 1.0 * _table_value(c0_ptr, t0_ptr, vec, m, j, MASK0)
        if STAGES == 2:
            w = w + g1 * _table_value(c1_ptr, t1_ptr, vec, m, j, MASK1)
        tl.store(out_ptr + vec * 8 + j, w * scale, mask=m)


def _table_args(rt: TableRuntime):
    c1 = rt.codes[1] if len(rt.codes) > 1 else rt.codes[0]
    t1 = rt.tables[1] if len(rt.tables) > 1 else rt.tables[0]
    g1 = rt.gains[1] if len(rt.gains) > 1 else 0.0
    offs = [0xFFFF if c.dtype == torch.int16 else 0xFF for c in (rt.codes[0], c1)]  # code masks
    return rt.codes[0], rt.tables[0], c1, t1, g1, offs


def table_decode(rt: TableRuntime, dtype: torch.dtype = torch.float32, block: int = 256) -> torch.Tensor:
    """``Q'`` ``[out, in]`` of a :class:`TableRuntime` in ``dtype`` (float32: bit-identical to the reference)."""
    n = rt.codes[0].shape[0]
    out = torch.empty(n * 8, dtype=torch.float32, device=rt.scales.device)
    c0, t0, c1, t1, g1, offs = _table_args(rt)
    _table_decode_kernel[(triton.cdiv(n, block),)](
        c0, t0, c1, t1, g1, rt.scales, out, n, G=rt.group_size, STAGES=len(rt.codes),
        MASK0=offs[0], MASK1=offs[1], BLOCK=block,
    )
    return out.view(rt.out_features, rt.in_features).to(dtype)


@triton.jit
def _table_matmul_kernel(c0_ptr, t0_ptr, c1_ptr, t1_ptr, g1, scales_ptr, x_ptr, y_ptr,
                         out_features, in_features, batch, VPR: tl.constexpr,
                         G: tl.constexpr, STAGES: tl.constexpr, MASK0: tl.constexpr, MASK1: tl.constexpr,
                         BLOCK_O: tl.constexpr, NV: tl.constexpr, BP: tl.constexpr):
    rows, row_ok, bs, b_ok = _row_block(out_features, batch, BLOCK_O, BP)
    acc = tl.zeros([BLOCK_O, BP], dtype=tl.float32)  # VPR: vectors per row
    for v0 in range(0, VPR, NV):
        vs, v_ok, m, vec = _tile(rows, row_ok, v0, NV, VPR)
        dot = tl.zeros([BLOCK_O, NV, BP], dtype=tl.float32)
        for j in tl.static_range(8):
            w = 1.0 * _table_value(c0_ptr, t0_ptr, vec, m, j, MASK0)
            if STAGES == 2:
                w = w + g1 * _table_value(c1_ptr, t1_ptr, vec, m, j, MASK1)
            dot += w[:, :, None] * _x_column(x_ptr, bs, b_ok, vs, v_ok, j, in_features, 8)[None, :, :]
        scale = tl.load(scales_ptr + vec // G, mask=m, other=0.0).to(tl.float32)
        acc += tl.sum(dot * scale[:, :, None], axis=1)
    _store_rows(y_ptr, acc, rows, row_ok, bs, b_ok, out_features, False)


def table_matmul(rt: TableRuntime, x: torch.Tensor, block_o: int = 16, nv: int = 16) -> torch.Tensor:
    """``x @ Q'^T`` float32 ``[B, out]`` for ``x: [B, in]``, B <= 16, with table lookups in registers."""
    if x.dim() != 2 or x.shape[1] != rt.in_features or x.shape[0] > 16:
        raise ValueError(f"table_matmul takes x [B <= 16, {rt.in_features}], got {tuple(x.shape)}")
    x = x.contiguous()
    batch = x.shape[0]
    y = torch.empty(batch, rt.out_features, dtype=torch.float32, device=x.device)
    c0, t0, c1, t1, g1, offs = _table_args(rt)
    _table_matmul_kernel[(triton.cdiv(rt.out_features, block_o),)](
        c0, t0, c1, t1, g1, rt.scales, x, y, rt.out_features, rt.in_features, batch,
        VPR=rt.in_features // 8,
        G=rt.group_size, STAGES=len(rt.codes), MASK0=offs[0], MASK1=offs[1], BLOCK_O=block_o, NV=nv, BP=_bp(batch),
    )
    return y
