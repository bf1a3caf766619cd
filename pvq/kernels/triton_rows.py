"""The whole-layer decode of the row-interleaved leaf layout (:mod:`pvq.kernels.leaf_rows`) in Triton.

``Q'`` ``[out, in]`` is what the backend multiplies by cuBLAS above 16 input rows (prefill). The CUDA decode
(``leafrow8_decode_kernel``) gives each thread one vector: its field's word is one of 32 lanes' (each 4-byte
read its own 32-byte sector), then the leaf words, then the gain level and the inverse norm, each load waiting
for the one before, and a thread has nothing else to do meanwhile (11008x4096 at 3 bits: about 70 us on an
H200, where the one-row product decodes the same layer in 13.6). Here a program decodes one step of one row
group, a ``[32 rows, 128 inputs]`` tile: the step's words are read lane-major as stored (coalesced), the 16
vectors of each of the 32 rows are decoded together (every load of the tile in flight at once), and the tile
is written row-major, each row's 256 (fp16) or 512 (float32) bytes contiguous.

The operations are the reference's (:func:`~pvq.kernels.leaf_rows.leaf_rows_decode_reference`):
``y * ((level * scale) * inverse_norms[|y|^2])`` in float32, so the float32 decode equals it bit for bit and a
16-bit one is those floats rounded once. Importing this module needs Triton.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .leaf_rows import ROW_GROUP, STEP_VECTORS, LeafRowsRuntime

__all__ = ["DEFAULT_DECODE_TILE", "DecodeTile", "DotTile", "leaf_rows_decode_triton", "leaf_rows_dot_triton"]

_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class DecodeTile:
    """What one program of the whole-layer decode covers: ``row_groups`` row groups (32 rows each) by ``steps``
    steps (128 inputs each), run by ``num_warps`` warps. Session 18's kernel is ``DecodeTile(1, 1, 4)``."""

    row_groups: int = 1
    steps: int = 1
    num_warps: int = 4

    def __post_init__(self):
        for name in ("row_groups", "steps", "num_warps"):
            v = getattr(self, name)
            if v not in (1, 2, 4, 8, 16):
                raise ValueError(f"DecodeTile.{name} must be a power of two from 1 to 16, not {v!r}")
        if self.row_groups * self.steps > 16:
            raise ValueError(f"a decode tile of {self.row_groups} row groups by {self.steps} steps holds "
                             f"{512 * self.row_groups * self.steps} vectors; take at most 16 row-group steps")


DEFAULT_DECODE_TILE = DecodeTile()
"""The tile :func:`leaf_rows_decode_triton` runs unless told (docs/kernels.md, session 22)."""


@triton.jit
def _decode_tile(words_ptr, scales_ptr, levels_ptr, leaves_ptr, inv_ptr, rg0, s0, steps, row_groups,
                 F: tl.constexpr, A: tl.constexpr, LG: tl.constexpr, GROUPS: tl.constexpr, SPP: tl.constexpr):
    """float32 ``[32 GROUPS, 128 SPP]``: rows ``32 rg0 ..`` by inputs ``128 s0 ..`` of ``Q'`` (zero where the
    row group or step does not exist)."""
    r = tl.arange(0, 32 * GROUPS)  # [R]: the tile's rows
    rg = rg0 + r // 32
    lane = r % 32
    j = tl.arange(0, 16 * SPP)  # [V]: the tile's vectors of a row
    s = s0 + j // 16
    valid = (rg < row_groups)[:, None] & (s < steps)[None, :]  # [R, V]
    item = rg.to(tl.int64)[:, None] * steps + s[None, :]  # [R, V]: the (row group, step) a vector belongs to
    bit = (j % 16) * F  # [V]: vector j's field starts at bit (j % 16) F of its row's W2 = F / 2 words
    q = item * (F // 2) * 32 + (bit >> 5)[None, :] * 32 + lane[:, None]  # [R, V]
    lo = tl.load(words_ptr + q, mask=valid, other=0).to(tl.uint32, bitcast=True).to(tl.uint64)
    spill = ((bit & 31) + F > 32)[None, :] & valid
    hi = tl.load(words_ptr + q + 32, mask=spill, other=0).to(tl.uint32, bitcast=True).to(tl.uint64)
    f = (((hi << 32) | lo) >> (bit & 31)[None, :].to(tl.uint64)) & ((1 << F) - 1)
    f = f.to(tl.int32)  # a field that does not exist is 0: leaves 0 and 0, |y|^2 = 0, inverse norm 0
    gain = f & ((1 << LG) - 1)
    wa = tl.load(leaves_ptr + ((f >> LG) & ((1 << A) - 1)))
    wb = tl.load(leaves_ptr + ((f >> (LG + A)) & ((1 << A) - 1)))
    n2 = tl.zeros_like(wa)
    for k in tl.static_range(4):
        ca = (((wa >> (8 * k)) & 0xFF) ^ 0x80) - 0x80
        cb = (((wb >> (8 * k)) & 0xFF) ^ 0x80) - 0x80
        n2 += ca * ca + cb * cb
    ss = s0 + tl.arange(0, SPP)  # [SPP]: the tile's steps; one scale a row and step
    sq = (rg.to(tl.int64)[:, None] * steps + ss[None, :]) * 32 + lane[:, None]
    sv = (rg < row_groups)[:, None] & (ss < steps)[None, :]
    scale = tl.load(scales_ptr + sq, mask=sv, other=0).to(tl.float32)  # [R, SPP]
    scale = tl.reshape(tl.broadcast_to(scale[:, :, None], (32 * GROUPS, SPP, 16)), (32 * GROUPS, 16 * SPP))
    mult = (tl.load(levels_ptr + gain) * scale) * tl.load(inv_ptr + n2)  # [R, V]
    t = tl.arange(0, 8)
    word = tl.where((t < 4)[None, None, :], wa[:, :, None], wb[:, :, None])  # [R, V, 8]
    c = (((word >> (8 * (t % 4))[None, None, :]) & 0xFF) ^ 0x80) - 0x80
    return tl.reshape(c.to(tl.float32) * mult[:, :, None], (32 * GROUPS, 128 * SPP))


@triton.jit
def _round_bf16(w):
    """float32 -> bf16 to nearest even by hand: Triton's CPU interpreter truncates (the GPU's cvt rounds)."""
    b = w.to(tl.uint32, bitcast=True)
    b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    return b.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _rows_decode_kernel(words_ptr, scales_ptr, levels_ptr, leaves_ptr, inv_ptr, out_ptr, out_features, steps,
                        row_groups, in_features, F: tl.constexpr, A: tl.constexpr, LG: tl.constexpr,
                        BF16: tl.constexpr, GROUPS: tl.constexpr, SPP: tl.constexpr):
    """Program (p, t): row groups ``GROUPS p .. GROUPS p + GROUPS - 1`` by steps ``SPP t .. SPP t + SPP - 1``
    (those that exist): rows ``32 GROUPS p ..``, inputs ``128 SPP t ..``."""
    w = _decode_tile(words_ptr, scales_ptr, levels_ptr, leaves_ptr, inv_ptr, tl.program_id(0) * GROUPS,
                     tl.program_id(1) * SPP, steps, row_groups, F, A, LG, GROUPS, SPP)
    row = tl.program_id(0) * (32 * GROUPS) + tl.arange(0, 32 * GROUPS)
    col = tl.program_id(1) * (128 * SPP) + tl.arange(0, 128 * SPP)
    ptrs = out_ptr + row.to(tl.int64)[:, None] * in_features + col[None, :]
    mask = (row < out_features)[:, None] & (col < in_features)[None, :]
    if BF16:
        tl.store(ptrs, _round_bf16(w), mask=mask)
    else:
        tl.store(ptrs, w.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rows_dot_kernel(x_ptr, words_ptr, scales_ptr, levels_ptr, leaves_ptr, inv_ptr, y_ptr, m_rows, out_features,
                     steps, row_groups, in_features, F: tl.constexpr, A: tl.constexpr, LG: tl.constexpr,
                     BF16: tl.constexpr, GROUPS: tl.constexpr, SPP: tl.constexpr, BLOCK_M: tl.constexpr,
                     SPLIT: tl.constexpr, F32_DOT: tl.constexpr):
    """Program (p, i, k): ``y[BLOCK_M i .., 32 GROUPS p ..]``, the tile of ``Q'`` decoded step block by step block
    (as the decode kernel's, rounded to x's dtype) and multiplied on tensor cores by x's rows, float32 sums; with
    ``SPLIT`` > 1, the step blocks ``k, k + SPLIT, ..`` only, into float32 partial sums ``y[k]``."""
    R: tl.constexpr = 32 * GROUPS
    C: tl.constexpr = 128 * SPP
    m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    acc = tl.zeros((R, BLOCK_M), dtype=tl.float32)
    for t in range(tl.program_id(2), tl.cdiv(steps, SPP), SPLIT):
        w = _decode_tile(words_ptr, scales_ptr, levels_ptr, leaves_ptr, inv_ptr, tl.program_id(0) * GROUPS,
                         t * SPP, steps, row_groups, F, A, LG, GROUPS, SPP)
        k = t * C + tl.arange(0, C)
        xt = tl.load(x_ptr + m.to(tl.int64)[None, :] * in_features + k[:, None],
                     mask=(m < m_rows)[None, :] & (k < in_features)[:, None], other=0)  # [C, BLOCK_M]
        w16 = _round_bf16(w) if BF16 else w.to(tl.float16)
        if F32_DOT:  # the same products (16-bit values are exact in float32); the interpreter's bf16 dot is wrong
            acc = tl.dot(w16.to(tl.float32), xt.to(tl.float32), acc)
        else:
            acc = tl.dot(w16, xt, acc)
    n = tl.program_id(0) * R + tl.arange(0, R)
    ptrs = y_ptr + (tl.program_id(2) * m_rows + m.to(tl.int64))[None, :] * out_features + n[:, None]
    tl.store(ptrs, acc.to(y_ptr.dtype.element_ty), mask=(m < m_rows)[None, :] & (n < out_features)[:, None])


@dataclass(frozen=True)
class DotTile:
    """What one program of :func:`leaf_rows_dot_triton` covers: ``row_groups`` row groups (32 output features
    each) by ``block_m`` input rows, ``steps`` steps (128 inputs each) decoded at a time, ``num_warps`` warps."""

    row_groups: int = 2
    steps: int = 1
    block_m: int = 64
    num_warps: int = 4
    split_k: int = 1  # programs a tile's steps are dealt over (float32 partial sums, then summed in order)

    def __post_init__(self):
        DecodeTile(self.row_groups, self.steps, self.num_warps)  # the same limits
        if self.block_m not in (16, 32, 64, 128, 256):
            raise ValueError(f"DotTile.block_m must be 16, 32, 64, 128 or 256 (tensor-core tiles), not "
                             f"{self.block_m!r}")
        if self.split_k not in (1, 2, 4, 8, 16):
            raise ValueError(f"DotTile.split_k must be 1, 2, 4, 8 or 16, not {self.split_k!r}")


def leaf_rows_dot_triton(rt: LeafRowsRuntime, x: torch.Tensor, tile: DotTile = DotTile()) -> torch.Tensor:
    """``x @ Q'^T`` ``[m, out]`` for fp16 or bf16 ``x`` ``[m, in]`` (contiguous), ``Q'`` decoded a tile at a time
    inside the product (never written out), rounded to x's dtype as the 16-bit decode rounds it; float32 sums."""
    if x.dtype not in (torch.float16, torch.bfloat16) or x.dim() != 2 or x.shape[1] != rt.in_features:
        raise ValueError(f"x must be fp16 or bf16 [m, {rt.in_features}], not {x.dtype} {tuple(x.shape)}")
    x = x.contiguous()
    split = tile.split_k
    y = torch.empty(split, x.shape[0], rt.out_features, dtype=x.dtype if split == 1 else torch.float32,
                    device=x.device)
    if y.numel() == 0:
        return torch.zeros(x.shape[0], rt.out_features, dtype=x.dtype, device=x.device)
    grid = (-(-rt.row_groups // tile.row_groups), -(-x.shape[0] // tile.block_m), split)
    _rows_dot_kernel[grid](
        x, rt.words, rt.row_scales, rt.levels, rt.leaves, rt.inverse_norms, y, x.shape[0], rt.out_features, rt.steps,
        rt.row_groups, rt.in_features, F=rt.field_bits, A=rt.leaf_bits, LG=rt.gain_bits,
        BF16=x.dtype == torch.bfloat16, GROUPS=tile.row_groups, SPP=tile.steps, BLOCK_M=tile.block_m, SPLIT=split,
        F32_DOT=not x.is_cuda, num_warps=tile.num_warps)
    return y[0] if split == 1 else y.sum(0).to(x.dtype)


def leaf_rows_decode_triton(rt: LeafRowsRuntime, dtype: torch.dtype = torch.float32,
                            tile: DecodeTile = DEFAULT_DECODE_TILE) -> torch.Tensor:
    """``Q'`` ``[out, in]`` in ``dtype`` (float32, fp16 or bf16) on the layer's device (module docstring), decoded
    in tiles of ``tile``."""
    if dtype not in _OUT_DTYPES:
        raise ValueError(f"the decode writes float32, float16 or bfloat16, not {dtype}")
    out = torch.empty(rt.out_features, rt.in_features, dtype=dtype, device=rt.words.device)
    if out.numel() == 0:
        return out
    assert rt.steps * STEP_VECTORS * 8 == rt.in_features and ROW_GROUP == 32
    grid = (-(-rt.row_groups // tile.row_groups), -(-rt.steps // tile.steps))
    _rows_decode_kernel[grid](
        rt.words, rt.row_scales, rt.levels, rt.leaves, rt.inverse_norms, out, rt.out_features, rt.steps,
        rt.row_groups, rt.in_features, F=rt.field_bits, A=rt.leaf_bits, LG=rt.gain_bits,
        BF16=dtype == torch.bfloat16, GROUPS=tile.row_groups, SPP=tile.steps, num_warps=tile.num_warps)
    return out
