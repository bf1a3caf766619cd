"""The leaf-pair runtime layout of D = 8 split-order PVQ layers: decoding without division or search.

The stored code of a vector is ``index * L + gain`` with the split-order index (:mod:`pvq.codecs.
pyramid_split`): unranking it needs the first half's pulses j (a search over K + 1 offsets), the split
entry of j and one division before the two P(4, k) leaves can be read. On an H200 those dependent
table reads bound the CUDA product (docs/kernels.md, sessions 7 and 8). This layout is transcoded once
at load from the stored codes (the checkpoint and its rate do not change) and keeps, per vector, the
answers of that search and division as one field of ``F = LG + 2 A`` bits:

    field = gain | ga << LG | gb << (LG + A)

``ga = leaf_offset[j] + qa`` and ``gb = leaf_offset[K - j] + rb`` are the rows of the two halves'
points in the table of every point of P(4, k), k <= K (``T`` rows, 4 x int8 each: the table the split
kernels share), ``A = ceil(log2 T)``, ``LG = log2 L``. A kernel reads the field, masks two byte
addresses and gathers the two leaves: no division, no search, one shared-memory round trip. The fields
are packed back to back per row, each row padded to whole int32 words, plus one word at the end (a
reader always takes the word after its first one). Sizes (D = 8, one fp16 scale per 16 vectors):
3 bits K = 11, L = 4: T = 11969, F = 30 (stored 23): 31 against 24 bits per vector with the scales,
1.29x the stored bytes (3.875 bits per weight); 2 bits K = 5, L = 2: T = 681, F = 21 (stored 15), 1.38x.

The decoded weight is bit for bit :func:`~pvq.kernels.split_runtime.split_decode_reference`'s:
``y * ((level * scale) * inverse_norm[|y|^2])`` in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from pvq.codecs.pyramid_counts import pyramid_count
from pvq.codecs.pyramid_split import split_offsets
from pvq.errors import QuantizeError

from .runtime import PvqLayerRuntime
from .split_runtime import SplitRuntime, inverse_norms, shared_leaves, split_runtime, split_runtime_supports

__all__ = ["LEAF_MAX_FIELD_BITS", "LEAF_MAX_PULSES", "LeafRuntime", "leaf_decode_reference", "leaf_field_bits",
           "leaf_fields_reference", "leaf_layout_supports", "leaf_matmul_reference", "leaf_points_reference",
           "leaf_runtime", "leaf_runtime_from_split"]

LEAF_MAX_FIELD_BITS = 32
"""Widest field: a reader takes two int32 words and one funnel shift."""
LEAF_MAX_PULSES = 16
"""Largest K (the half2 products need |y . x| / 16 < 65504: K max|x| / 16)."""
_CHUNK = 1 << 22  # vectors transcoded at a time (int64 temporaries of about 40 bytes each)


@lru_cache(maxsize=None)
def leaf_field_bits(pulses: int, num_levels: int) -> tuple[int, int, int]:
    """(F, A, LG) for D = 8: field bits, leaf-row bits ``ceil(log2 T)``, gain bits ``log2 L``."""
    rows = sum(pyramid_count(4, k) for k in range(pulses + 1))
    a = max(1, (rows - 1).bit_length())
    lg = max(0, (num_levels - 1).bit_length())
    return lg + 2 * a, a, lg


def leaf_layout_supports(codec) -> bool:
    """Whether a codec's codes transcode to this layout: split order, D = 8, L a power of two, K <= 16,
    fields of at most 32 bits (up to about 3.3 bits per weight)."""
    if not split_runtime_supports(codec) or codec.dim != 8 or codec.pulses > LEAF_MAX_PULSES:
        return False
    levels = codec.gain.num_levels
    return levels & (levels - 1) == 0 and leaf_field_bits(codec.pulses, levels)[0] <= LEAF_MAX_FIELD_BITS


@dataclass
class LeafRuntime(PvqLayerRuntime):
    """A D = 8 PVQ layer in the leaf-pair layout (module docstring); one device. ``words`` replaces the
    stored codes on the device: the layer's code memory is ``words`` plus ``scales``."""

    words: torch.Tensor  # int32 [out * row_words + 1]: row o's fields at words [o row_words, (o + 1) row_words)
    row_words: int
    field_bits: int  # F
    leaf_bits: int  # A
    gain_bits: int  # LG
    leaves: torch.Tensor  # int32 [T]: points of P(4, k <= K), 4 x int8 (shared by the layers of one K)
    inverse_norms: torch.Tensor  # float32 [K^2 + 1]

    @property
    def num_vectors(self) -> int:
        return self.out_features * self.in_features // self.dim

    def code_bytes(self) -> int:
        """Device bytes of this layer's codes and scales (what the 1.3x-of-stored budget counts)."""
        return self.words.numel() * 4 + self.scales.numel() * self.scales.element_size()

    def nbytes(self) -> int:
        """Bytes this layer adds beyond its stored tensors: the transcoded words less the stored codes
        they replace are counted by :meth:`code_bytes`; here the small per-layer tables."""
        return sum(t.numel() * t.element_size() for t in (self.levels, self.counts, self.inverse_norms))


def _codes(words: torch.Tensor, code_bits: int, start: int, count: int) -> torch.Tensor:
    """Combined codes of vectors ``start .. start + count`` from a little-endian int32 bitstream (int64)."""
    bit = torch.arange(start, start + count, dtype=torch.int64, device=words.device) * code_bits
    q, s = bit >> 5, bit & 31
    lo = words[q].to(torch.int64) & 0xFFFFFFFF
    hi = words[(q + 1).clamp(max=words.numel() - 1)].to(torch.int64) & 0xFFFFFFFF
    hi = torch.where(q + 1 < words.numel(), hi, 0)
    return ((lo | (hi << 32)) >> s) & ((1 << code_bits) - 1)


@lru_cache(maxsize=None)
def _split_tables(pulses: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(S_8(K, j) for j = 1..K, N(4, k) for k = 0..K, leaf offsets for k = 0..K) int64 on the CPU."""
    s = torch.tensor(split_offsets(8, pulses)[pulses][1 : pulses + 1], dtype=torch.int64)
    n4 = torch.tensor([pyramid_count(4, k) for k in range(pulses + 1)], dtype=torch.int64)
    off = torch.cat([torch.zeros(1, dtype=torch.int64), n4.cumsum(0)[:-1]])
    return s, n4, off


def _fields(code: torch.Tensor, pulses: int, levels: int, a_bits: int, lg: int) -> torch.Tensor:
    """Leaf-pair fields ``[n]`` int64 of combined split-order codes ``[n]``."""
    s, n4, off = (t.to(code.device) for t in _split_tables(pulses))
    gain, r = code & (levels - 1), code >> lg
    j = torch.searchsorted(s, r, right=True)  # the first half's pulses: S_8(K, j) <= r < S_8(K, j + 1)
    rest = r - torch.where(j > 0, s[(j - 1).clamp(min=0)], 0)
    d = n4[pulses - j]
    ga, gb = off[j] + rest // d, off[pulses - j] + rest % d
    return gain | (ga << lg) | (gb << (lg + a_bits))


def _pack_rows(fields: torch.Tensor, vpr: int, width: int, row_words: int, first_row: int, out: torch.Tensor) -> None:
    """Adds ``fields`` (whole rows from ``first_row``, ``vpr`` a row) packed ``width`` bits each into the
    int64 words ``out`` (fields never overlap, so adding is or-ing)."""
    n = fields.numel()
    v = torch.arange(n, dtype=torch.int64, device=fields.device)
    row, col = v // vpr + first_row, v % vpr
    bit = col * width
    q, s = row * row_words + (bit >> 5), bit & 31
    out.index_add_(0, q, (fields << s) & 0xFFFFFFFF)
    spill = s + width > 32
    out.index_add_(0, q[spill] + 1, fields[spill] >> (32 - s[spill]))


def leaf_runtime_from_split(srt: SplitRuntime) -> LeafRuntime:
    """Transcodes a D = 8 :class:`SplitRuntime` (its device) into the leaf-pair layout (chunks of rows)."""
    width, a_bits, lg = leaf_field_bits(srt.pulses, srt.num_levels)
    if srt.dim != 8 or width > LEAF_MAX_FIELD_BITS or srt.num_levels & (srt.num_levels - 1):
        raise QuantizeError(f"the leaf-pair layout takes D = 8, L a power of two and fields of at most "
                            f"{LEAF_MAX_FIELD_BITS} bits; got D={srt.dim}, K={srt.pulses}, L={srt.num_levels}")
    vpr = srt.in_features // 8
    row_words = (vpr * width + 31) // 32
    dev = srt.words.device
    out = torch.zeros(srt.out_features * row_words + 1, dtype=torch.int64, device=dev)
    rows_chunk = max(1, _CHUNK // max(vpr, 1))
    for r0 in range(0, srt.out_features, rows_chunk):
        r1 = min(srt.out_features, r0 + rows_chunk)
        code = _codes(srt.words, srt.code_bits, r0 * vpr, (r1 - r0) * vpr)
        _pack_rows(_fields(code, srt.pulses, srt.num_levels, a_bits, lg), vpr, width, row_words, r0, out)
    words = torch.where(out >= 1 << 31, out - (1 << 32), out).to(torch.int32)
    leaves, _ = shared_leaves(srt.pulses, str(dev))
    return LeafRuntime(
        out_features=srt.out_features, in_features=srt.in_features, dim=8, pulses=srt.pulses,
        group_size=srt.group_size, num_levels=srt.num_levels, code_bits=srt.code_bits, scales=srt.scales,
        levels=srt.levels, counts=srt.counts, words=words, row_words=row_words, field_bits=width, leaf_bits=a_bits,
        gain_bits=lg, leaves=leaves, inverse_norms=inverse_norms(srt.pulses).to(dev))


def leaf_runtime(layer, device: torch.device | str | None = None) -> LeafRuntime:
    """The :class:`LeafRuntime` of a split-order D = 8 PVQ :class:`~pvq.models.QuantizedLinear` (transcoded
    on ``device``; the stored codes are not kept there)."""
    if not leaf_layout_supports(layer.codec):
        raise QuantizeError(f"{layer.codec.describe()} does not transcode to the leaf-pair layout (split order, "
                            f"D = 8, L a power of two, K <= {LEAF_MAX_PULSES}, fields of <= {LEAF_MAX_FIELD_BITS} bits)")
    return leaf_runtime_from_split(split_runtime(layer, device))


# ---------------------------------------------------------------- references


def leaf_fields_reference(rt: LeafRuntime, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """The fields ``[n]`` int64 of every vector (or of rows ``r0 .. r1``), read as the kernel reads them: the
    row's first word, the two words holding the field, one shift."""
    vpr = rt.in_features // 8
    r0, r1 = rows if rows is not None else (0, rt.out_features)
    v = torch.arange(r0 * vpr, r1 * vpr, dtype=torch.int64, device=rt.words.device)
    bit = (v % vpr) * rt.field_bits
    q, s = (v // vpr) * rt.row_words + (bit >> 5), bit & 31
    words = rt.words.to(torch.int64) & 0xFFFFFFFF
    return ((words[q] | (words[q + 1] << 32)) >> s) & ((1 << rt.field_bits) - 1)


def _leaf_coords(packed: torch.Tensor) -> torch.Tensor:
    """int32 words of 4 x int8 -> ``[n, 4]`` int64."""
    w = packed.to(torch.int64)
    return ((w.unsqueeze(1) >> torch.arange(0, 32, 8, device=w.device)) & 0xFF).sub(128).remainder(256).sub(128)


def leaf_points_reference(rt: LeafRuntime, rows: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(integer points ``[n, 8]`` int64, gain codes ``[n]`` int64) of every vector (or of rows ``r0 .. r1``)."""
    f = leaf_fields_reference(rt, rows)
    mask = (1 << rt.leaf_bits) - 1
    ga, gb = (f >> rt.gain_bits) & mask, (f >> (rt.gain_bits + rt.leaf_bits)) & mask
    y = torch.cat([_leaf_coords(rt.leaves[ga]), _leaf_coords(rt.leaves[gb])], 1)
    return y, f & ((1 << rt.gain_bits) - 1)


def leaf_decode_reference(rt: LeafRuntime, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """``Q'`` float32 ``[out, in]`` (or its rows ``r0 .. r1``): ``y * ((level * scale) * inverse_norms[|y|^2])``
    (the split reference's operations, so equal to it bit for bit)."""
    r0, r1 = rows if rows is not None else (0, rt.out_features)
    y, gain = leaf_points_reference(rt, (r0, r1))
    per_row = rt.in_features // (8 * rt.group_size)
    scale = rt.scales[r0 * per_row : r1 * per_row].to(torch.float32).repeat_interleave(rt.group_size)
    mult = (rt.levels[gain] * scale) * rt.inverse_norms[(y * y).sum(1)]
    return (y.to(torch.float32) * mult.unsqueeze(1)).reshape(r1 - r0, rt.in_features)


def leaf_matmul_reference(rt: LeafRuntime, x: torch.Tensor) -> torch.Tensor:
    """``x @ Q'^T`` float32 ``[B, out]`` for rotated inputs ``x: [B, in]`` (float32 sums)."""
    return x.float() @ leaf_decode_reference(rt).T
