"""The leaf-pair layout interleaved by rows: one lane of a warp per output row, fields read without shifts
known only at run time (D = 8, 16-vector scale groups).

:mod:`pvq.kernels.leaf_layout` keeps per vector the two P(4, k) leaf rows and the gain as one field; its
kernel gives each lane one vector of a row and reduces every row over the warp (shuffles per row) and reads
each field with run-time word offsets and shifts. Here the same fields (padded to an even width F) are
laid out so that **lane l of a warp owns output row 32 rg + l**: per row group rg (32 rows, the last padded
with zero fields) and step s (16 vectors: one scale group), the 16 fields of each row fill ``W2 = F / 2``
int32 words, stored word-major across the 32 rows (``words[((rg S + s) W2 + w) 32 + lane]``: a warp's
load of word w is 128 contiguous bytes), and the scales likewise (``scales[(rg S + s) 32 + lane]``). A
lane decodes its row's 16 vectors with compile-time shifts, multiplies them by x read from shared memory
(one broadcast), and needs no reduction over the warp. Sizes: F = 30 at 3 bits (31 bits a vector with the
scale, 1.29x the stored 24), F = 22 at 2 bits (23 against 16: 1.44x).

**Whole points** (``whole_points``, up to 2 bits: K <= 5): a field of F = 16 bits ``gain | index << 2`` names the
vector's point in a table of every point of P(8, K) in the split order (the stored index itself: no leaves), each
point's eight coordinates biased by 8 in the nibbles of one int32 (coordinate 2 i at bits 4 i, 2 i + 1 at bits
16 + 4 i: the kernel makes half2 pairs with one mask each). 2 bits (K = 5): 9424 points, a 37.7 KB table; 17 bits a
vector with the scale against the stored 16 (1.06x, where the leaf pairs take 1.44x: over the issue's 1.3x cap),
and one 4-byte table read a vector instead of two.

**Quads** (``quad_swapped``, session 29): the same words with the low two bits of a field's row and of its vector
swapped within a step: lane ``4 g + t`` holds, in its slots ``j = 4 u + a``, the fields of rows ``4 g + a`` and vectors
``4 u + t`` (an involution: :func:`quad_slot`). The four lanes of a quad then hold the same four rows at four
neighbouring vectors, the shape of an ``mma.m16n8k16`` operand fragment: a lane's decoded halves are its A registers
as they stand and its B registers one 16-byte read of x, where the plain order goes through a shared-memory stage and
``ldmatrix`` (pvq/kernels/csrc/leafrow8_gemv.quad_mma.cu, ``leafrow8_quad_mma_kernel``).

The decoded weight is bit for bit :func:`~pvq.kernels.split_runtime.split_decode_reference`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from pvq.codecs.pyramid_counts import pyramid_count
from pvq.codecs.pyramid_split import split_unrank
from pvq.errors import QuantizeError

from .leaf_layout import _CHUNK, _codes, _fields, _leaf_coords, leaf_field_bits, leaf_layout_supports
from .runtime import PvqLayerRuntime
from .split_runtime import SplitRuntime, inverse_norms, shared_leaves, split_runtime

__all__ = ["POINT_FIELD_BITS", "POINT_INDEX_BITS", "ROW_GROUP", "STEP_VECTORS", "LeafRowsRuntime",
           "leaf_rows_decode_reference", "leaf_rows_from_split", "leaf_rows_runtime", "leaf_rows_supports",
           "point_coords", "point_rows_runtime", "point_rows_supports", "point_table", "quad_slot"]

ROW_GROUP = 32
"""Output rows a warp owns (one a lane)."""
STEP_VECTORS = 16
"""Vectors a lane decodes per step (one scale group)."""


def quad_slot(row: torch.Tensor, vector: torch.Tensor, quad_swapped: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(lane, slot) of the field of output ``row`` (within its group, 0..31) and ``vector`` (within its step, 0..15):
    ``(row, vector)`` itself, or with their low two bits swapped (``quad_swapped``: module docstring)."""
    if not quad_swapped:
        return row, vector
    return (row & ~3) | (vector & 3), (vector & ~3) | (row & 3)


def even_field_bits(pulses: int, num_levels: int) -> tuple[int, int, int]:
    """(F, A, LG): the leaf-pair field padded to an even width (16 fields fill F / 2 words)."""
    width, a_bits, lg = leaf_field_bits(pulses, num_levels)
    return width + (width & 1), a_bits, lg


POINT_FIELD_BITS = 16
"""Width of a whole-point field: gain in bits 0 .. LG - 1 (LG <= 2), the point's index in bits 2 .. 15."""
POINT_INDEX_BITS = 14
"""Largest index of a whole-point field: tables of at most 2^14 points (65.5 KB; D = 8 up to K = 5)."""
_POINT_MAX_PULSES = 7  # coordinates biased by 8 fit a nibble


def _whole_points_fit(pulses: int, num_levels: int) -> bool:
    """At most 4 gain levels (a power of two: the gain's bits below the index) and at most 2^14 points of P(8, K),
    each coordinate in a nibble."""
    return (num_levels <= 4 and num_levels & (num_levels - 1) == 0 and pulses <= _POINT_MAX_PULSES
            and pyramid_count(8, pulses) <= 1 << POINT_INDEX_BITS)


def point_rows_supports(codec) -> bool:
    """Whether a codec's layers take the whole-point form of this layout: the leaf-pair layout's codecs with scale
    groups of 16 vectors, at most 4 gain levels and at most 2^14 points of P(8, K) (K <= 5: up to 2 bits)."""
    return (leaf_layout_supports(codec) and codec.group_size == STEP_VECTORS
            and _whole_points_fit(codec.pulses, codec.gain.num_levels))


@lru_cache(maxsize=None)
def _point_table_cpu(pulses: int) -> torch.Tensor:
    y = split_unrank(torch.arange(pyramid_count(8, pulses), dtype=torch.int64), 8, pulses) + 8  # [N, 8] in 1..15
    packed = torch.zeros(y.shape[0], dtype=torch.int64)
    for t in range(8):  # coordinate 2 i at bits 4 i, 2 i + 1 at bits 16 + 4 i
        packed |= y[:, t] << (4 * (t // 2) + 16 * (t % 2))
    return torch.where(packed >= 1 << 31, packed - (1 << 32), packed).to(torch.int32)


def point_table(pulses: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Every point of P(8, K) in the split order (row i: index i), its coordinates biased by 8 in the nibbles of one
    int32 (coordinate 2 i at bits 4 i, 2 i + 1 at bits 16 + 4 i); ``[N(8, K)]``."""
    if not 0 <= pulses <= _POINT_MAX_PULSES:
        raise ValueError(f"whole points pack coordinates of |y_i| <= {_POINT_MAX_PULSES} in nibbles, got K = {pulses}")
    return _point_table_cpu(pulses).to(device)


@lru_cache(maxsize=None)
def shared_point_table(pulses: int, device: str) -> torch.Tensor:
    """:func:`point_table` on a device, built once and shared by every layer of that rate (as
    :func:`~pvq.kernels.split_runtime.shared_leaves` is: one table in GPU memory, and in L2 from layer to layer)."""
    return point_table(pulses, device)


def point_coords(packed: torch.Tensor) -> torch.Tensor:
    """int32 words of :func:`point_table` -> ``[n, 8]`` int64 coordinates."""
    w = packed.to(torch.int64) & 0xFFFFFFFF
    t = torch.arange(8, device=w.device)
    shift = 4 * (t // 2) + 16 * (t % 2)
    return ((w.unsqueeze(1) >> shift) & 0xF) - 8


def leaf_rows_supports(codec) -> bool:
    """Whether a codec's layers take this layout: the leaf-pair layout's codecs with scale groups of 16
    vectors and even fields of at most 32 bits."""
    if not leaf_layout_supports(codec) or codec.group_size != STEP_VECTORS:
        return False
    return even_field_bits(codec.pulses, codec.gain.num_levels)[0] <= 32


@dataclass
class LeafRowsRuntime(PvqLayerRuntime):
    """A D = 8 PVQ layer in the row-interleaved leaf-pair layout (module docstring); one device. ``scales`` is empty:
    the per-group scales are ``row_scales``, in the layout's order."""

    words: torch.Tensor  # int32 [RG * S * W2 * 32]
    row_scales: torch.Tensor  # fp16 [RG * S * 32]
    steps: int  # S = in / 128
    field_bits: int  # F (even)
    leaf_bits: int  # A
    gain_bits: int  # LG
    leaves: torch.Tensor  # int32 [T]: leaf pairs' P(4, k <= K) table; whole points: point_table [N(8, K)]
    inverse_norms: torch.Tensor  # float32 [K^2 + 1]
    whole_points: bool = False  # fields gain | index << 2 into point_table (module docstring)
    quad_swapped: bool = False  # lane 4 g + t, slot 4 u + a: row 4 g + a, vector 4 u + t (module docstring)

    @property
    def row_groups(self) -> int:
        return -(-self.out_features // ROW_GROUP)

    def code_bytes(self) -> int:
        """Device bytes of the codes and scales (padded rows included)."""
        return self.words.numel() * 4 + self.row_scales.numel() * 2

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.levels, self.counts, self.inverse_norms))


def leaf_rows_from_split(srt: SplitRuntime, whole_points: bool = False, quad_swapped: bool = False) -> LeafRowsRuntime:
    """Transcodes a D = 8 :class:`SplitRuntime` with 16-vector scale groups into this layout (its device): fields of
    leaf pairs, or of whole points (``whole_points``: K <= 5, at most 4 gain levels), in the plain order or in quads
    (``quad_swapped``)."""
    width, a_bits, lg = even_field_bits(srt.pulses, srt.num_levels)
    vpr = srt.in_features // 8
    if srt.dim != 8 or srt.group_size != STEP_VECTORS or width > 32 or vpr % STEP_VECTORS:
        raise QuantizeError(f"the row-interleaved leaf layout takes D = 8, groups of {STEP_VECTORS} vectors and "
                            f"fields of at most 32 bits; got D={srt.dim}, G={srt.group_size}, F={width}")
    if whole_points:
        if not _whole_points_fit(srt.pulses, srt.num_levels):
            raise QuantizeError(f"whole points take at most 4 gain levels (a power of two) and at most "
                                f"2^{POINT_INDEX_BITS} points of P(8, K); got L={srt.num_levels}, K={srt.pulses}")
        width, a_bits = POINT_FIELD_BITS, POINT_INDEX_BITS
    steps, w2 = vpr // STEP_VECTORS, width // 2
    rg = -(-srt.out_features // ROW_GROUP)
    dev = srt.words.device
    out = torch.zeros(rg * steps * w2 * ROW_GROUP, dtype=torch.int64, device=dev)
    rows_chunk = max(ROW_GROUP, _CHUNK // max(vpr, 1) // ROW_GROUP * ROW_GROUP)
    for r0 in range(0, srt.out_features, rows_chunk):
        r1 = min(srt.out_features, r0 + rows_chunk)
        code = _codes(srt.words, srt.code_bits, r0 * vpr, (r1 - r0) * vpr)
        if whole_points:
            f = (code & (srt.num_levels - 1)) | ((code >> lg) << 2)
        else:
            f = _fields(code, srt.pulses, srt.num_levels, a_bits, lg)
        v = torch.arange(f.numel(), dtype=torch.int64, device=dev)
        row, col = v // vpr + r0, v % vpr
        lane, slot = quad_slot(row % ROW_GROUP, col % STEP_VECTORS, quad_swapped)
        bit = slot * width
        base = ((row // ROW_GROUP) * steps + col // STEP_VECTORS) * w2
        q = (base + (bit >> 5)) * ROW_GROUP + lane
        s = bit & 31
        out.index_add_(0, q, (f << s) & 0xFFFFFFFF)
        spill = s + width > 32
        out.index_add_(0, q[spill] + ROW_GROUP, f[spill] >> (32 - s[spill]))
    words = torch.where(out >= 1 << 31, out - (1 << 32), out).to(torch.int32)
    sc = torch.zeros(rg * ROW_GROUP, steps, dtype=torch.float16, device=dev)
    sc[: srt.out_features] = srt.scales.reshape(srt.out_features, steps)
    row_scales = sc.reshape(rg, ROW_GROUP, steps).transpose(1, 2).contiguous().reshape(-1)
    leaves = shared_point_table(srt.pulses, str(dev)) if whole_points else shared_leaves(srt.pulses, str(dev))[0]
    # the stored scales are laid out again in row_scales; the runtime keeps none in the stored order, so a loaded
    # model's stored scales can leave the GPU with its codes (QuantizedLinear.move_stored_to_host): at 3 bits they
    # were 0.125 bits a weight held twice (31 + 1 bits a vector against the stored 24: 1.33x; now 1.29x)
    return LeafRowsRuntime(
        out_features=srt.out_features, in_features=srt.in_features, dim=8, pulses=srt.pulses,
        group_size=srt.group_size, num_levels=srt.num_levels, code_bits=srt.code_bits, scales=srt.scales.new_empty(0),
        levels=srt.levels, counts=srt.counts, words=words, row_scales=row_scales, steps=steps, field_bits=width,
        leaf_bits=a_bits, gain_bits=lg, leaves=leaves, inverse_norms=inverse_norms(srt.pulses).to(dev),
        whole_points=whole_points, quad_swapped=quad_swapped)


def leaf_rows_runtime(layer, device: torch.device | str | None = None, quad_swapped: bool = False) -> LeafRowsRuntime:
    """The :class:`LeafRowsRuntime` of a split-order D = 8 PVQ layer with 16-vector scale groups (in the quad order
    where ``quad_swapped``)."""
    if not leaf_rows_supports(layer.codec):
        raise QuantizeError(f"{layer.codec.describe()} does not transcode to the row-interleaved leaf layout "
                            f"(split order, D = 8, groups of {STEP_VECTORS} vectors, fields of <= 32 bits)")
    return leaf_rows_from_split(split_runtime(layer, device), quad_swapped=quad_swapped)


def point_rows_runtime(layer, device: torch.device | str | None = None, quad_swapped: bool = False) -> LeafRowsRuntime:
    """The :class:`LeafRowsRuntime` with whole points of a split-order D = 8 PVQ layer (:func:`point_rows_supports`),
    in the quad order where ``quad_swapped``."""
    if not point_rows_supports(layer.codec):
        raise QuantizeError(f"{layer.codec.describe()} does not transcode to whole points (split order, D = 8, groups "
                            f"of {STEP_VECTORS} vectors, at most 4 gain levels, at most 2^{POINT_INDEX_BITS} points)")
    return leaf_rows_from_split(split_runtime(layer, device), whole_points=True, quad_swapped=quad_swapped)


def leaf_rows_decode_reference(rt: LeafRowsRuntime, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """``Q'`` float32 ``[out, in]`` (or its rows ``r0 .. r1``), every field read as the kernel reads it (a lane's
    words of a step, a compile-time shift): ``y * ((level * scale) * inverse_norms[|y|^2])`` (the split
    reference's operations)."""
    vpr, w2, width = rt.in_features // 8, rt.field_bits // 2, rt.field_bits
    dev = rt.words.device
    r0, r1 = rows if rows is not None else (0, rt.out_features)
    v = torch.arange(r0 * vpr, r1 * vpr, dtype=torch.int64, device=dev)
    row, col = v // vpr, v % vpr
    lane, slot = quad_slot(row % ROW_GROUP, col % STEP_VECTORS, rt.quad_swapped)
    bit = slot * width
    step = (row // ROW_GROUP) * rt.steps + col // STEP_VECTORS
    q = (step * w2 + (bit >> 5)) * ROW_GROUP + lane
    words = rt.words.to(torch.int64) & 0xFFFFFFFF
    hi = torch.where(bit % 32 + width > 32, words[(q + ROW_GROUP).clamp(max=words.numel() - 1)], 0)
    f = ((words[q] | (hi << 32)) >> (bit & 31)) & ((1 << width) - 1)
    mask = (1 << rt.leaf_bits) - 1
    if rt.whole_points:
        y = point_coords(rt.leaves[(f >> 2) & mask])
    else:
        ga, gb = (f >> rt.gain_bits) & mask, (f >> (rt.gain_bits + rt.leaf_bits)) & mask
        y = torch.cat([_leaf_coords(rt.leaves[ga]), _leaf_coords(rt.leaves[gb])], 1)
    gain = f & ((1 << rt.gain_bits) - 1)
    scale = rt.row_scales.to(torch.float32)[step * ROW_GROUP + row % ROW_GROUP]
    mult = (rt.levels[gain] * scale) * rt.inverse_norms[(y * y).sum(1)]
    return (y.to(torch.float32) * mult.unsqueeze(1)).reshape(r1 - r0, rt.in_features)
