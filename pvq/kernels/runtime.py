"""Runtime layouts of quantized layers for the kernels, and their plain PyTorch references.

A runtime layout is what a kernel reads: built once from a layer's stored
tensors by ``prepare`` (lossless: the same codes, laid out for decoding), kept
on the device, never the dense weight.

* :class:`PyramidRuntime` - PVQ layers whose combined code ``index * L + gain``
  fits in 56 bits (``D * bits`` up to about 56: D=8 up to 7 bits per weight,
  D=16 up to about 3.4). The kernels read the stored bitstream itself (code
  ``i`` at bits ``[i w, (i + 1) w)``, one unaligned 8-byte read): no copy, so a
  loaded layer holds its stored bytes plus the int64 count tables ``N(d, k)``,
  ``A(d, k) = sum_{i<=k} N(d, i)`` and the gain levels (a few KB). The decoded
  weight is ``y * m`` with ``m = level[g] * scale / |y|`` (float64, rounded once).
* :class:`TableRuntime` - E8 layers: per stage the stored codes (16-bit codes
  viewed as int16, 8-bit as uint8: again no copy) and the fp16 codebook table
  ``[2^bits, 8]`` (shared by all layers on a device); the decoded weight is
  ``scale * sum_k g_k table_k[code_k]``.

The ``*_reference`` functions compute exactly what the Triton kernels compute
(same float32 operations in the same order), so decodes compare bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from pvq.codecs import SCALE_KEY
from pvq.codecs.pyramid import PyramidCodec, _count_table, _cumulative_table
from pvq.errors import QuantizeError

__all__ = [
    "PYRAMID_MAX_CODE_BITS",
    "PyramidRuntime",
    "TableRuntime",
    "pyramid_decode_reference",
    "pyramid_matmul_reference",
    "pyramid_points_reference",
    "pyramid_runtime",
    "table_decode_reference",
    "table_matmul_reference",
    "table_runtime",
]

PYRAMID_MAX_CODE_BITS = 56
"""Largest combined PVQ code (index and gain) the int64 kernels decode (one unaligned 8-byte read)."""


# ---------------------------------------------------------------- PVQ


@dataclass
class PvqLayerRuntime:
    """What every PVQ runtime layout holds (:func:`pvq_layer_fields`); one device."""

    out_features: int
    in_features: int
    dim: int
    pulses: int
    group_size: int
    num_levels: int
    code_bits: int
    scales: torch.Tensor  # fp16 [out * in / (D * G)]
    levels: torch.Tensor  # float32 [L] gain levels
    counts: torch.Tensor  # int64 [D + 1, K + 1]  N(d, k)


@dataclass
class PyramidRuntime(PvqLayerRuntime):
    """A PVQ layer laid out for the kernels (see the module docstring); all tensors on one device."""

    codes: torch.Tensor  # uint8 bitstream: combined code i at bits [i * code_bits, (i + 1) * code_bits)
    cumulative: torch.Tensor  # int64 [D + 1, K + 1]  A(d, k)

    def nbytes(self) -> int:
        """Bytes this layer adds beyond its stored tensors (codes and scales are read in place)."""
        return sum(t.numel() * t.element_size() for t in (self.levels, self.counts, self.cumulative))


def layer_tensors(layer, device: torch.device | str | None) -> tuple[dict[str, torch.Tensor], torch.device]:
    """(a layer's stored tensors, the device a runtime goes to: ``device`` or the layer's own)."""
    return layer.stored_tensors(), torch.device(device) if device is not None else layer._buffer_device()


def pvq_layer_fields(layer, device: torch.device | str | None) -> tuple[dict, dict[str, torch.Tensor], torch.device]:
    """(the :class:`PvqLayerRuntime` fields of a PVQ layer as keywords, its stored tensors, the device)."""
    codec = layer.codec
    stored, dev = layer_tensors(layer, device)
    fields = dict(
        out_features=layer.out_features, in_features=layer.in_features, dim=codec.dim, pulses=codec.pulses,
        group_size=codec.group_size, num_levels=codec.gain.num_levels, code_bits=codec.code_bits,
        scales=stored[SCALE_KEY].to(dev), levels=codec.gain.levels.to(dtype=torch.float32, device=dev),
        counts=torch.tensor([list(r) for r in _count_table(codec.dim, codec.pulses)], dtype=torch.int64, device=dev),
    )
    return fields, stored, dev


def pyramid_supports(codec) -> bool:
    """Whether a codec's codes (Fischer's index order) fit the int64 PVQ kernels."""
    return (isinstance(codec, PyramidCodec) and getattr(codec, "index_order", "fischer") == "fischer"
            and codec.code_bits <= PYRAMID_MAX_CODE_BITS)


def pyramid_runtime(layer, device: torch.device | str | None = None) -> PyramidRuntime:
    """The :class:`PyramidRuntime` of a PVQ :class:`~pvq.models.QuantizedLinear` (lossless transcode)."""
    codec = layer.codec
    if not pyramid_supports(codec):
        raise QuantizeError(
            f"{codec.describe()} needs {getattr(codec, 'code_bits', '?')}-bit codes; the PVQ kernels decode up to "
            f"{PYRAMID_MAX_CODE_BITS} bits (D * bits per weight <= about 56, e.g. --dim 16 up to 3.4 bits, --dim 8 up to 7)"
        )
    fields, stored, dev = pvq_layer_fields(layer, device)
    return PyramidRuntime(
        **fields, codes=stored["codes"].to(dev),
        cumulative=torch.tensor([list(r) for r in _cumulative_table(codec.dim, codec.pulses)], dtype=torch.int64,
                                device=dev),
    )


def _combined(rt: PyramidRuntime) -> torch.Tensor:
    """Every vector's combined code from the bitstream, as the kernels read it (8 bytes from the
    byte holding its first bit, shifted and masked)."""
    n = rt.out_features * rt.in_features // rt.dim
    bit = torch.arange(n, dtype=torch.int64, device=rt.codes.device) * rt.code_bits
    first = bit >> 3
    idx = first.unsqueeze(1) + torch.arange(8, device=rt.codes.device)
    data = rt.codes.to(torch.int64)
    bytes_ = torch.where(idx < data.numel(), data[idx.clamp(max=data.numel() - 1)], 0)
    word = (bytes_ << (torch.arange(8, device=rt.codes.device) * 8)).sum(1)  # wraps like int64 in the kernel
    return (word >> (bit & 7)) & ((1 << rt.code_bits) - 1)


def pyramid_points_reference(rt: PyramidRuntime) -> tuple[torch.Tensor, torch.Tensor]:
    """(integer points ``[n, D]`` int64, gain codes ``[n]``) of every vector: a plain unrank loop
    over coordinates with the magnitude found by binary search, as the kernels do."""
    code = _combined(rt)
    gain = code % rt.num_levels
    r = code // rt.num_levels
    n, d, kmax = code.shape[0], rt.dim, rt.pulses
    counts, cum = rt.counts, rt.cumulative
    k = torch.full((n,), kmax, dtype=torch.int64, device=code.device)
    y = torch.zeros(n, d, dtype=torch.int64, device=code.device)
    steps = max(1, (kmax + 1).bit_length())
    for j in range(d):
        nd = d - j
        is_zero = r < counts[nd - 1, k]
        need = counts[nd, k] - r
        lo = torch.ones_like(k)  # condition holds at lo, fails at hi
        hi = k + 1
        for _ in range(steps):
            mid = (lo + hi) // 2
            valid = mid < hi
            ok = valid & (2 * cum[nd - 1, (k - mid).clamp(min=0)] >= need)
            lo = torch.where(ok & valid, mid, lo)
            hi = torch.where(valid & ~ok, mid, hi)
        a = torch.where(is_zero, 0, lo)
        after = (k - a).clamp(min=0)
        r = r - torch.where(is_zero, 0, counts[nd, k] - 2 * cum[nd - 1, after])
        block = counts[nd - 1, after]
        neg = ~is_zero & (r >= block)
        r = r - torch.where(neg, block, 0)
        y[:, j] = torch.where(neg, -a, a)
        k = k - a
    return y, gain


def pyramid_decode_reference(rt: PyramidRuntime) -> torch.Tensor:
    """``Q'`` float32 ``[out, in]`` (rotated coordinates): ``y * m`` with the per-vector multiplier
    ``m = level * scale / sqrt(|y|^2)`` computed in float64 and rounded once to float32."""
    y, gain = pyramid_points_reference(rt)
    norm = torch.sqrt((y * y).sum(1).to(torch.float64))
    scale = rt.scales.to(torch.float64).repeat_interleave(rt.group_size)
    mult = (rt.levels[gain].to(torch.float64) * scale / norm).to(torch.float32)
    return (y.to(torch.float32) * mult.unsqueeze(1)).reshape(rt.out_features, rt.in_features)


def pyramid_matmul_reference(rt: PyramidRuntime, x: torch.Tensor) -> torch.Tensor:
    """``x @ Q'^T`` for rotated inputs ``x: [B, in]`` -> ``[B, out]`` float32."""
    return x.float() @ pyramid_decode_reference(rt).T


# ---------------------------------------------------------------- E8 (codebook tables)


@dataclass
class TableRuntime:
    """A codebook layer (E8) laid out for the kernels: per stage codes and an fp16 table ``[2^b, 8]``."""

    out_features: int
    in_features: int
    group_size: int
    codes: list[torch.Tensor]  # per stage: the stored codes viewed as int16 (16-bit) or uint8 (8-bit) [out * in / 8]
    tables: list[torch.Tensor]  # per stage: fp16 [2^b, 8]
    gains: list[float]
    scales: torch.Tensor  # fp16 [out * in / (8 * G)]

    def nbytes(self) -> int:
        """Bytes this layer adds beyond its stored tensors (the shared tables are not its own): 0."""
        return 0


def table_supports(codec) -> bool:
    return getattr(codec, "name", None) == "e8" and len(codec.books) <= 2


def table_runtime(layer, device: torch.device | str | None = None) -> TableRuntime:
    """The :class:`TableRuntime` of an E8 :class:`~pvq.models.QuantizedLinear` (lossless)."""
    codec = layer.codec
    if not table_supports(codec):
        raise QuantizeError(f"{codec.describe()} is not an E8 layer of at most two stages")
    stored, dev = layer_tensors(layer, device)
    out_codes, tables = [], []
    for k, book in enumerate(codec.books):
        c = stored[f"stage{k}"].to(dev)  # packed little-endian at 8 or 16 bits: the codes themselves
        if book.bits not in (8, 16) or c.numel() * 8 != layer.num_vectors * book.bits:
            raise QuantizeError(f"E8 stage {k} codes of {book.bits} bits cannot be read in place")
        out_codes.append(c.view(torch.int16) if book.bits == 16 else c)
        tables.append(_shared_table(type(book).__name__, str(dev)))
    return TableRuntime(layer.out_features, layer.in_features, codec.group_size, out_codes, tables,
                        [float(g) for g in codec.gains], stored[SCALE_KEY].to(dev))


@lru_cache(maxsize=None)
def _shared_table(book: str, device: str) -> torch.Tensor:
    """The fp16 table of a codebook on a device, built once (immutable, shared by every layer)."""
    from pvq.codecs.lattice import e8_codebook8, e8_codebook16

    table = {"E8Codebook16": e8_codebook16, "E8Codebook8": e8_codebook8}[book]().codewords(torch.float32)
    if not torch.equal(table.half().float(), table):
        raise QuantizeError(f"an entry of {book} is not exact in fp16")
    return table.half().contiguous().to(device)


def _table_codes(rt: TableRuntime, k: int) -> torch.Tensor:
    c = rt.codes[k].to(torch.int64)
    return c & 0xFFFF if rt.codes[k].dtype == torch.int16 else c


def table_decode_reference(rt: TableRuntime) -> torch.Tensor:
    """``Q'`` float32 ``[out, in]``: ``(sum_k g_k table_k[code_k]) * scale`` in float32."""
    out = None
    for k, (table, g) in enumerate(zip(rt.tables, rt.gains)):
        part = g * table.float()[_table_codes(rt, k)]
        out = part if out is None else out + part
    scale = rt.scales.to(torch.float32).repeat_interleave(rt.group_size)
    return (out * scale.unsqueeze(1)).reshape(rt.out_features, rt.in_features)


def table_matmul_reference(rt: TableRuntime, x: torch.Tensor) -> torch.Tensor:
    """``x @ Q'^T`` for rotated inputs ``x: [B, in]`` -> ``[B, out]`` float32."""
    return x.float() @ table_decode_reference(rt).T
