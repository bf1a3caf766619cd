"""The whole-layer decode of the row-interleaved leaf layout (:mod:`pvq.kernels.leaf_rows`) in Triton.

``Q'`` ``[out, in]`` is what the backend multiplies by cuBLAS above 16 input rows (prefill). The CUDA decode
(``leafrow8_decode_kernel``) gives each thread one vector: its field's word is one of 32 lanes' (each 4-byte
read its own 32-byte sector), then the leaf words, then the gain level and the inverse norm, each load waiting
for the one before, and a thread has nothing else to do meanwhile (11008x4096 at 3 bits: about 70 us on an
H200, where the one-row product decodes the same layer in 13.6). Here a program decodes one step of one row
group, a ``[32 rows, 128 inputs]`` tile: the step's words are read lane-major as stored (coalesced), the 16
vectors of each of the 32 rows are decoded together (every load of the tile in flight at once), and the tile
is written row-major, each row's 256 (fp16) or 512 (float32) bytes contiguous. Layers with whole points
(:func:`~pvq.kernels.leaf_rows.point_rows_runtime`) read one table word a vector and its eight nibbles.

The operations are the reference's (:func:`~pvq.kernels.leaf_rows.leaf_rows_decode_reference`):
``y * ((level * scale) * inverse_norms[|y|^2])`` in float32, so the float32 decode equals it bit for bit and a
16-bit one is those floats rounded once. Importing this module needs Triton.

A product that decoded these tiles inside its K loop (no fp16 layer written; sessions 27-28) measured 1.04x to
6.2x slower than this decode and cuBLAS at 16 to 2048 rows on an H100 and left (docs/kernels.md, session 28).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .leaf_rows import ROW_GROUP, STEP_VECTORS, LeafRowsRuntime
from .triton_launch import StraightLauncher

__all__ = ["leaf_rows_decode_triton"]

_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _rows_decode_kernel(words_ptr, scales_ptr, levels_ptr, leaves_ptr, inv_ptr, out_ptr, out_features, steps,
                        in_features, F: tl.constexpr, A: tl.constexpr, LG: tl.constexpr, BF16: tl.constexpr,
                        POINTS: tl.constexpr, QUADS: tl.constexpr = False):
    """Program (rg, s): rows ``32 rg .. 32 rg + 31``, inputs ``128 s .. 128 s + 127``. ``POINTS``: whole-point fields
    (``gain | index << 2``, coordinates in the nibbles of one table word), else leaf pairs. ``QUADS``: the quad order
    (lane 4 g + t, slot 4 u + a: row 4 g + a, vector 4 u + t), each vector stored where it belongs. (Programs of 2 or
    4 tiles and 8 warps measured no faster on an H100 in session 33 and left: docs/kernels.md.)"""
    rg, s = tl.program_id(0), tl.program_id(1)
    lane = tl.arange(0, 32)
    item = rg.to(tl.int64) * steps + s
    j = tl.arange(0, 16)
    bit = j * F  # [16]: vector j's field starts at bit j F of the row's W2 = F / 2 words
    q = item * (F // 2) * 32 + (bit >> 5)[None, :] * 32 + lane[:, None]  # [32, 16]
    lo = tl.load(words_ptr + q).to(tl.uint32, bitcast=True).to(tl.uint64)
    spill = ((bit & 31) + F > 32)[None, :] & (lane[:, None] >= 0)
    hi = tl.load(words_ptr + q + 32, mask=spill, other=0).to(tl.uint32, bitcast=True).to(tl.uint64)
    f = (((hi << 32) | lo) >> (bit & 31)[None, :].to(tl.uint64)) & ((1 << F) - 1)
    f = f.to(tl.int32)
    gain = f & ((1 << LG) - 1)
    t = tl.arange(0, 8)
    if POINTS:
        wp = tl.load(leaves_ptr + ((f >> 2) & ((1 << A) - 1)))
        n2 = tl.zeros_like(wp)
        for k in tl.static_range(8):  # (a sum over a third axis of c measured 1.4x slower: 45.5 against 31.9 us)
            ck = ((wp >> (4 * (k // 2) + 16 * (k % 2))) & 0xF) - 8
            n2 += ck * ck
        shift = 4 * (t // 2) + 16 * (t % 2)  # coordinate t's nibble
        c = ((wp[:, :, None] >> shift[None, None, :]) & 0xF) - 8  # [32, 16, 8]
    else:
        wa = tl.load(leaves_ptr + ((f >> LG) & ((1 << A) - 1)))
        wb = tl.load(leaves_ptr + ((f >> (LG + A)) & ((1 << A) - 1)))
        n2 = tl.zeros_like(wa)
        for k in tl.static_range(4):
            ca = (((wa >> (8 * k)) & 0xFF) ^ 0x80) - 0x80
            cb = (((wb >> (8 * k)) & 0xFF) ^ 0x80) - 0x80
            n2 += ca * ca + cb * cb
        word = tl.where((t < 4)[None, None, :], wa[:, :, None], wb[:, :, None])  # [32, 16, 8]
        c = (((word >> (8 * (t % 4))[None, None, :]) & 0xFF) ^ 0x80) - 0x80
    if QUADS:
        r32 = (lane[:, None] & ~3) | (j[None, :] & 3)  # [32, 16]: the field's row in the group
        vec = (j[None, :] & ~3) | (lane[:, None] & 3)  # and its vector in the step
        scale2 = tl.load(scales_ptr + item * 32 + r32).to(tl.float32)
        mult = (tl.load(levels_ptr + gain) * scale2) * tl.load(inv_ptr + n2)  # [32, 16]
        w = c.to(tl.float32) * mult[:, :, None]  # [32, 16, 8]
        row3 = rg * 32 + r32[:, :, None]
        ptrs = out_ptr + row3.to(tl.int64) * in_features + s * 128 + vec[:, :, None] * 8 + t[None, None, :]
        _store_rounded(ptrs, w, row3 < out_features, BF16)
    else:
        _store_plain(scales_ptr, levels_ptr, inv_ptr, out_ptr, out_features, in_features, rg, s, item, lane, gain, n2,
                     c, BF16)


@triton.jit
def _store_plain(scales_ptr, levels_ptr, inv_ptr, out_ptr, out_features, in_features, rg, s, item, lane, gain, n2, c,
                 BF16: tl.constexpr):
    """The plain order's tile: row ``32 rg + lane``, its 16 vectors in order."""
    scale = tl.load(scales_ptr + item * 32 + lane).to(tl.float32)  # [32]
    mult = (tl.load(levels_ptr + gain) * scale[:, None]) * tl.load(inv_ptr + n2)  # [32, 16]
    w = tl.reshape(c.to(tl.float32) * mult[:, :, None], (32, 128))
    row = rg * 32 + lane
    col = s * 128 + tl.arange(0, 128)
    ptrs = out_ptr + row.to(tl.int64)[:, None] * in_features + col[None, :]
    _store_rounded(ptrs, w, (row < out_features)[:, None], BF16)


@triton.jit
def _store_rounded(ptrs, w, mask, BF16: tl.constexpr):
    """float32 ``w`` stored at ``ptrs`` in their element type; bf16 rounded to nearest even by hand (Triton's CPU
    interpreter truncates; the GPU's cvt rounds)."""
    if BF16:
        b = w.to(tl.uint32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
        tl.store(ptrs, b.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
    else:
        tl.store(ptrs, w.to(ptrs.dtype.element_ty), mask=mask)


_ROWS_DECODE = StraightLauncher(_rows_decode_kernel)  # a 7B prefill launches 128 of these (triton_launch)


def leaf_rows_decode_triton(rt: LeafRowsRuntime, dtype: torch.dtype = torch.float32,
                            out: torch.Tensor | None = None) -> torch.Tensor:
    """``Q'`` ``[out, in]`` in ``dtype`` (float32, fp16 or bf16) on the layer's device (module docstring), written
    into ``out`` where given (contiguous, that shape and dtype, on that device: a buffer the caller reuses)."""
    if dtype not in _OUT_DTYPES:
        raise ValueError(f"the decode writes float32, float16 or bfloat16, not {dtype}")
    shape = (rt.out_features, rt.in_features)
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=rt.words.device)
    elif tuple(out.shape) != shape or out.dtype != dtype or out.device != rt.words.device or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {dtype} tensor of {shape} on {rt.words.device}; got "
                         f"{out.dtype} {tuple(out.shape)} on {out.device}")
    if out.numel() == 0:
        return out
    assert rt.steps * STEP_VECTORS * 8 == rt.in_features and ROW_GROUP == 32
    _ROWS_DECODE((rt.row_groups, rt.steps), rt.words, rt.row_scales, rt.levels, rt.leaves, rt.inverse_norms,
                 out, rt.out_features, rt.steps, rt.in_features, F=rt.field_bits, A=rt.leaf_bits, LG=rt.gain_bits,
                 BF16=dtype == torch.bfloat16, POINTS=rt.whole_points, QUADS=rt.quad_swapped)
    return out
