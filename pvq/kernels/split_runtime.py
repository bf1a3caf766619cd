"""Runtime layout of PVQ layers stored in the split index order, and its plain PyTorch references.

A PVQ codec with ``index_order="split"`` (:mod:`pvq.codecs.pyramid_split`)
numbers the points of P(D, K) by halves: one search over the pulses of the
first half (at most K + 1 offsets), one division, down to sub-vectors of 4
whose points are read from one table. :class:`SplitRuntime` is what the Triton
kernels read: the stored bitstream itself, viewed as int32 words (no copy when
its length is a multiple of 4 bytes, else one padded copy), combined code
``index * L + gain`` of vector ``i`` at bits ``[i w, (i + 1) w)``; the split
offsets ``S_n(k, j)`` and counts ``N(n, k)`` (int64, a few KB); the points of
P(4, k) for k <= K packed 4 x int8 in one int32 (``T`` entries; 47 KB at
D=8, 3 bits; 0.7 MB at D=16, 3 bits, shared by every layer with the same K on
a device); the gain levels.

The decoded weight of vector ``i`` is ``y * m``, ``m = (level[g] * scale) * (1 / sqrt(|y|^2))``
in float32, the inverse norm read from a table of K^2 + 1 float32 values rounded once from
float64 (as the kernels compute it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from pvq.codecs.pyramid import PyramidCodec
from pvq.codecs.pyramid_counts import pyramid_count
from pvq.codecs.pyramid_split import leaf_points, split_offsets, split_supported, split_unrank
from pvq.errors import QuantizeError

from .runtime import PvqLayerRuntime, pvq_layer_fields

__all__ = [
    "SPLIT_DIMS",
    "SPLIT_MAX_CODE_BITS",
    "SplitRuntime",
    "split_decode_reference",
    "split_matmul_reference",
    "split_points_reference",
    "split_runtime",
    "split_runtime_supports",
]

SPLIT_DIMS = (4, 8, 16)
"""Vector dimensions the split kernels decode."""
SPLIT_MAX_CODE_BITS = 62
"""Widest combined code (index and gain) the kernels read (three int32 words)."""


@dataclass
class SplitRuntime(PvqLayerRuntime):
    """A split-order PVQ layer laid out for the kernels (see the module docstring); one device."""

    words: torch.Tensor  # int32 [ceil(n * w / 32)]: the stored bitstream
    offsets16: torch.Tensor  # int64 [K + 1, K + 2]  S_16(k, j) (zeros [1, 1] when D < 16)
    offsets8: torch.Tensor  # int64 [K + 1, K + 2]  S_8(k, j) (zeros [1, 1] when D < 8)
    leaf_offsets: torch.Tensor  # int64 [K + 2]: P(4, k) starts at row leaf_offsets[k] of leaves
    leaves: torch.Tensor  # int32 [T]: points of P(4, k), 4 x int8 little-endian
    inverse4: torch.Tensor  # float64 [K + 1]  1 / N(4, k): the divisors of the splits, as reciprocals
    inverse8: torch.Tensor  # float64 [K + 1]  1 / N(8, k) (1 / N(D, k) when D < 8: unused)
    inverse_norms: torch.Tensor  # float32 [K^2 + 1]  1 / sqrt(n), rounded once from float64 (n = |y|^2)

    @property
    def wide(self) -> bool:
        """N(D, K) >= 2^30: the top split runs in int64 (else int32; host-side counts, no device sync)."""
        return pyramid_count(self.dim, self.pulses) >= 1 << 30

    @property
    def wide_half(self) -> bool:
        """N(D / 2, K) >= 2^30: the second split runs in int64."""
        return pyramid_count(self.dim // 2, self.pulses) >= 1 << 30

    @property
    def num_vectors(self) -> int:
        return self.out_features * self.in_features // self.dim

    def nbytes(self) -> int:
        """Bytes this layer adds beyond its stored tensors (shared leaf table not counted: see
        :func:`shared_leaves`)."""
        extra = [self.levels, self.counts, self.offsets16, self.offsets8, self.leaf_offsets, self.inverse4,
                 self.inverse8, self.inverse_norms]
        return sum(t.numel() * t.element_size() for t in extra)


def split_runtime_supports(codec) -> bool:
    """Whether the split kernels decode this codec's codes."""
    return (isinstance(codec, PyramidCodec) and getattr(codec, "index_order", "fischer") == "split"
            and codec.dim in SPLIT_DIMS and codec.code_bits <= SPLIT_MAX_CODE_BITS and codec.pulses <= 127
            and split_supported(codec.dim, codec.pulses))


@lru_cache(maxsize=None)
def shared_leaves(pulses: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(points of P(4, k <= K) packed int32 ``[T]``, offsets int64 ``[K + 2]``) on a device, built once."""
    pts, offsets = leaf_points(pulses)
    b = (pts & 0xFF).to(torch.int64)
    packed = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16) | (b[:, 3] << 24)
    packed = torch.where(packed >= 1 << 31, packed - (1 << 32), packed).to(torch.int32)
    return packed.to(device), offsets.to(device)


def _offsets(dim: int, pulses: int, device) -> torch.Tensor:
    if dim < 8:
        return torch.zeros(1, 1, dtype=torch.int64, device=device)
    return torch.tensor([list(r) for r in split_offsets(dim, pulses)], dtype=torch.int64, device=device)


def _words(codes: torch.Tensor) -> torch.Tensor:
    """The uint8 bitstream as int32 words: a view when it can be, else a zero-padded copy."""
    codes = codes.contiguous()
    if codes.numel() % 4 == 0 and codes.storage_offset() % 4 == 0:
        return codes.view(torch.int32)
    padded = torch.zeros((codes.numel() + 3) // 4 * 4, dtype=torch.uint8, device=codes.device)
    padded[: codes.numel()] = codes
    return padded.view(torch.int32)


def split_runtime(layer, device: torch.device | str | None = None) -> SplitRuntime:
    """The :class:`SplitRuntime` of a split-order PVQ :class:`~pvq.models.QuantizedLinear`."""
    codec = layer.codec
    if not split_runtime_supports(codec):
        raise QuantizeError(
            f"{codec.describe()} is not decoded by the split kernels: they need index_order='split', "
            f"D in {SPLIT_DIMS}, codes of at most {SPLIT_MAX_CODE_BITS} bits and K <= 127"
        )
    fields, stored, dev = pvq_layer_fields(layer, device)
    leaves, leaf_offsets = shared_leaves(codec.pulses, str(dev))
    inverse = 1.0 / fields["counts"].to(torch.float64).clamp(min=1)
    return SplitRuntime(
        **fields, words=_words(stored["codes"].to(dev)), offsets16=_offsets(16 if codec.dim >= 16 else 0, codec.pulses, dev),
        offsets8=_offsets(8 if codec.dim >= 8 else 0, codec.pulses, dev), leaf_offsets=leaf_offsets, leaves=leaves,
        inverse4=inverse[4].contiguous(), inverse8=inverse[min(8, codec.dim)].contiguous(),
        inverse_norms=inverse_norms(codec.pulses).to(dev),
    )


def inverse_norms(pulses: int) -> torch.Tensor:
    """float32 ``1 / sqrt(n)`` for n = 0..K^2 (every |y|^2 of a point of P(D, K); n = 0 -> 0)."""
    n = torch.arange(pulses * pulses + 1, dtype=torch.float64)
    return torch.where(n > 0, 1.0 / n.clamp(min=1).sqrt(), 0.0).to(torch.float32)


# ---------------------------------------------------------------- references


def split_codes_reference(rt: SplitRuntime) -> torch.Tensor:
    """Every vector's combined code ``[n]`` int64 from the int32 words (little-endian bit order)."""
    n, w = rt.num_vectors, rt.code_bits
    words = rt.words.to(torch.int64) & 0xFFFFFFFF
    bit = torch.arange(n, dtype=torch.int64, device=words.device) * w
    q, s = bit >> 5, bit & 31
    code = torch.zeros(n, dtype=torch.int64, device=words.device)
    for t in range(3):  # at most three words hold a code of <= 62 bits
        idx = q + t
        word = torch.where(idx < words.numel(), words[idx.clamp(max=words.numel() - 1)], 0)
        shift = 32 * t - s  # where this word's bit 0 lands in the code
        part = torch.where(shift >= 0, word << shift.clamp(min=0), word >> (-shift).clamp(min=0))
        code = code | torch.where(shift < 64, part, 0)
    return code & ((1 << w) - 1)


def split_points_reference(rt: SplitRuntime) -> tuple[torch.Tensor, torch.Tensor]:
    """(integer points ``[n, D]`` int64, gain codes ``[n]`` int64) of every vector."""
    code = split_codes_reference(rt)
    return split_unrank(code // rt.num_levels, rt.dim, rt.pulses), code % rt.num_levels


def split_decode_reference(rt: SplitRuntime) -> torch.Tensor:
    """``Q'`` float32 ``[out, in]`` (rotated coordinates): ``y * ((level * scale) * inverse_norms[|y|^2])``."""
    y, gain = split_points_reference(rt)
    yf = y.to(torch.float32)
    scale = rt.scales.to(torch.float32).repeat_interleave(rt.group_size)
    mult = (rt.levels[gain] * scale) * rt.inverse_norms[(y * y).sum(1)]
    return (yf * mult.unsqueeze(1)).reshape(rt.out_features, rt.in_features)


def split_matmul_reference(rt: SplitRuntime, x: torch.Tensor) -> torch.Tensor:
    """``x @ Q'^T`` float32 ``[B, out]`` for rotated inputs ``x: [B, in]``, with ``Q'`` rounded to the
    dtype of ``x`` as the fused kernel multiplies them (fp32 accumulation)."""
    w = split_decode_reference(rt).to(x.dtype).float()
    return x.float() @ w.T
