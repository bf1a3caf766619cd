"""Online activation quantizers: per-token tensor math, no state but their settings.

An activation quantizer turns the rows ``x: [n, in]`` (one row per token: the input of a
linear layer, usually already rotated) into integer points and gains::

    x[t, j s : (j + 1) s]  ~  gains[t, j] * points[t, j s : (j + 1) s]      (s = in / J)

so that a product with integer weight points runs on the points (int8/int16, int32
accumulation, :mod:`pvq.kernels.int_product`) and is scaled by the gains afterwards.

* ``pvq`` - the row is cut into vectors of ``D`` and each is projected onto the pyramid
  ``P(D, K)`` (the greedy projection of :mod:`pvq.codecs.pyramid`, the same one that
  quantizes weights). One gain per vector, either
  ``gain_bits = 0``: fp16, the least-squares gain ``<x, y> / |y|^2`` rounded to fp16; or
  ``gain_bits = b > 0``: quantized, the pyramid codec's Beta-law (Lloyd-Max) gain code of
  ``b`` bits relative to the token's L2 norm, stored as one fp16 number per token (the
  row is the codec's group of ``G = in / D`` vectors).
* ``rtn`` - per-token symmetric round to nearest on the ``2^b`` levels
  ``[-2^(b-1), 2^(b-1) - 1]`` times one fp16 scale per token,
  ``clip * max|x| / (2^(b-1) - 1)`` (QuaRot's activation quantizer; ``clip`` < 1 clips).

Bits per activation count everything a token's quantized input carries. ``pvq``: per
vector ``ceil(log2(N(D, K) * L))`` bits (the index and gain code that an encoder writes;
``L = 2^gain_bits``, or the index alone plus 16 bits for an fp16 gain), plus 16 bits per
token for the norm when the gains are quantized. ``rtn``: ``b`` bits per entry plus 16 per
token. In memory the points are int8 (int16 when an entry can exceed 127), which is what
the integer product reads.

Each token is quantized from its own row only (batch-independent) and deterministically.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, ClassVar

import torch

from .base import CodecError, check_finite, fp16_exact
from .pyramid import PyramidCodec, _largest_pulses, pulses_for_rate, pyramid_count, pyramid_search_greedy

__all__ = [
    "ACTIVATION_QUANTIZERS",
    "ActPoints",
    "ActivationQuantizer",
    "PyramidActivationQuantizer",
    "RtnActivationQuantizer",
    "dims_dividing",
    "make_activation_quantizer",
    "register_activation_quantizer",
]

FP16_TINY = 2.0**-24


def dims_dividing(n: int, at_most: int | None = None) -> list[int]:
    """Divisors of ``n`` (up to ``at_most``), the vector sizes that tile a row of ``n``."""
    return [d for d in range(1, (at_most or n) + 1) if n % d == 0]


@dataclass
class ActPoints:
    """Quantized activations: ``points [n, in]`` (int8 or int16) and ``gains [n, J]`` (float32).

    Slice ``j`` of a row is ``points[:, j s : (j + 1) s] * gains[:, j]`` with ``s = in / J``.
    """

    points: torch.Tensor
    gains: torch.Tensor

    @property
    def slice(self) -> int:
        return self.points.shape[1] // self.gains.shape[1]

    def dequantize(self) -> torch.Tensor:
        """``x_hat [n, in]`` float32: each point times its slice's gain."""
        n, m = self.points.shape
        j = self.gains.shape[1]
        xh = self.points.float().view(n, j, m // j) * self.gains.float().unsqueeze(2)
        return xh.reshape(n, m)


class ActivationQuantizer(abc.ABC):
    """Quantizes rows of ``in_features`` activations (see the module docstring)."""

    name: ClassVar[str] = ""

    def __init__(self, in_features: int):
        if not isinstance(in_features, int) or in_features < 1:
            raise CodecError(f"in_features must be a positive integer, got {in_features!r}")
        self.in_features = in_features

    @property
    @abc.abstractmethod
    def slice(self) -> int:
        """Width of the slices that share one gain (D for pvq, the whole row for rtn)."""

    @property
    @abc.abstractmethod
    def max_abs(self) -> int:
        """The largest |entry| a point can have (int8 holds up to 127)."""

    @property
    def point_dtype(self) -> torch.dtype:
        return torch.int8 if self.max_abs <= 127 else torch.int16

    @abc.abstractmethod
    def _quantize(self, x: torch.Tensor) -> ActPoints:
        """Rows ``x: [n, in]`` (checked) -> points and gains."""

    @abc.abstractmethod
    def bits_per_activation(self) -> float:
        """Bits per input entry, gains and per-token scales included."""

    @abc.abstractmethod
    def config(self) -> dict:
        """Settings that rebuild this quantizer with :func:`make_activation_quantizer` (plus ``in_features``)."""

    @abc.abstractmethod
    def describe(self) -> str: ...

    def check_rows(self, x: torch.Tensor, finite: bool = True) -> None:
        """Refuse rows that are not float ``[n, in]``; ``finite``: also NaN or inf (a host sync on GPUs)."""
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise CodecError(f"activations must have shape [n, {self.in_features}], got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise CodecError(f"activations must be floating point, got {x.dtype}")
        if finite:
            check_finite(x, "activations")

    def quantize(self, x: torch.Tensor) -> ActPoints:
        """Quantize rows ``x: [n, in]`` (float) token by token."""
        self.check_rows(x)
        return self._quantize(x)

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """``dequantize(quantize(x))`` for ``x: [..., in]``, in ``x``'s dtype and shape."""
        flat = x.reshape(-1, self.in_features)
        return self.quantize(flat).dequantize().to(x.dtype).reshape(x.shape)


# ---------------------------------------------------------------- pvq


class PyramidActivationQuantizer(ActivationQuantizer):
    """Vectors of ``dim`` projected onto ``P(dim, pulses)``; gains fp16 (``gain_bits=0``) or quantized."""

    name = "pvq"

    def __init__(self, in_features: int, dim: int, pulses: int, gain_bits: int = 0):
        super().__init__(in_features)
        if not isinstance(dim, int) or dim < 1 or in_features % dim:
            raise CodecError(
                f"activation vector size D={dim!r} does not divide the layer's {in_features} inputs; "
                f"sizes that do: {dims_dividing(in_features, 64)}"
            )
        if not isinstance(pulses, int) or pulses < 1:
            raise CodecError(f"pulses K must be an integer >= 1, got {pulses!r}")
        if not isinstance(gain_bits, int) or isinstance(gain_bits, bool) or not 0 <= gain_bits <= 12:
            raise CodecError(f"gain_bits must be 0 (fp16 gains) or 1..12, got {gain_bits!r}")
        self.dim, self.pulses, self.gain_bits = dim, pulses, gain_bits
        self.vectors = in_features // dim
        self.codec = None
        if gain_bits:
            if self.vectors < 2:
                raise CodecError(
                    f"quantized gains share one norm per token over in/D >= 2 vectors; in={in_features}, D={dim}: "
                    "use a smaller D or gain_bits=0 (fp16 gains)"
                )
            self.codec = PyramidCodec(dim, pulses, group_size=self.vectors, gain_bits=gain_bits)
        index_bits = (pyramid_count(dim, pulses) - 1).bit_length()
        self.vector_bits = self.codec.code_bits if self.codec else index_bits + 16

    @property
    def slice(self) -> int:
        return self.dim

    @property
    def max_abs(self) -> int:
        return self.pulses

    def _quantize(self, x):
        n = x.shape[0]
        v = x.reshape(n * self.vectors, self.dim)
        if self.codec is None:
            y = pyramid_search_greedy(v, self.pulses)
            yd = y.double()
            g = fp16_exact((v.double() * yd).sum(1) / (yd * yd).sum(1))
        else:
            norm = fp16_exact(x.double().norm(dim=1))
            y, m = self.codec.project(v, norm.repeat_interleave(self.vectors))
            g = m.float()
        return ActPoints(y.to(self.point_dtype).reshape(n, self.in_features), g.reshape(n, self.vectors))

    def bits_per_activation(self) -> float:
        per_token = self.vectors * self.vector_bits + (16 if self.codec else 0)
        return per_token / self.in_features

    def config(self) -> dict:
        return {"method": self.name, "dim": self.dim, "pulses": self.pulses, "gain_bits": self.gain_bits}

    def describe(self) -> str:
        gain = f"{self.gain_bits}-bit gains" if self.gain_bits else "fp16 gains"
        return f"pvq(D={self.dim}, K={self.pulses}, {gain}, {self.bits_per_activation():.3f} b/act)"


ACT_GAIN_CHOICES = (0, 3, 4, 5, 6, 8)


def pvq_act_pulses(bits: float, dim: int, in_features: int, gain_bits: int) -> int:
    """Largest K whose bits per activation (everything counted) are at most ``bits``."""
    if gain_bits == 0:
        k = _largest_pulses(dim, lambda count: (count - 1).bit_length() + 16 <= bits * dim + 1e-9)
        if k < 1:
            raise CodecError(f"no K reaches {bits} bits per activation at D={dim} with fp16 gains "
                             f"(the gain alone takes {16 / dim:.2f}); raise the rate or D")
        return k
    return pulses_for_rate(bits, dim, in_features // dim, gain_bits)


@lru_cache(maxsize=64)
def best_act_gain_bits(bits: float, dim: int, in_features: int) -> int:
    """The gain setting (0: fp16, else bits) with the lowest MSE at ``bits`` per activation on
    seeded Gaussian rows (rotated activations are close to Gaussian); cached."""
    rows = max(4, (1 << 15) // in_features)
    x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(4321))
    best, best_mse = None, math.inf
    for gb in ACT_GAIN_CHOICES:
        if gb and in_features // dim < 2:
            continue
        try:
            q = PyramidActivationQuantizer(in_features, dim, pvq_act_pulses(bits, dim, in_features, gb), gb)
        except CodecError:
            continue
        mse = float((q.fake_quantize(x) - x).pow(2).mean())
        if mse < best_mse:
            best, best_mse = gb, mse
    if best is None:
        pvq_act_pulses(bits, dim, in_features, 0)  # raises the explanatory error
    return best


# ---------------------------------------------------------------- rtn


class RtnActivationQuantizer(ActivationQuantizer):
    """Per-token symmetric round to nearest, ``2^bits`` levels, one fp16 scale per token."""

    name = "rtn"

    def __init__(self, in_features: int, bits: int, clip: float = 1.0):
        super().__init__(in_features)
        if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 16:
            raise CodecError(f"rtn activation bits must be an integer in [2, 16], got {bits!r}")
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not 0 < clip <= 1:
            raise CodecError(f"clip ratio must be in (0, 1], got {clip!r}")
        self.bits, self.clip = bits, float(clip)
        self.maxq = 2 ** (bits - 1) - 1

    @property
    def slice(self) -> int:
        return self.in_features

    @property
    def max_abs(self) -> int:
        return self.maxq + 1

    @property
    def point_dtype(self) -> torch.dtype:
        return torch.int8 if self.bits <= 8 else torch.int16  # levels -2^(b-1) .. 2^(b-1) - 1

    def _quantize(self, x):
        xd = x.double()
        scale = fp16_exact(self.clip * xd.abs().amax(1) / self.maxq).double().clamp(min=FP16_TINY)
        q = torch.round(xd / scale.unsqueeze(1)).clamp(-self.maxq - 1, self.maxq)
        return ActPoints(q.to(self.point_dtype), scale.float().unsqueeze(1))

    def bits_per_activation(self) -> float:
        return self.bits + 16 / self.in_features

    def config(self) -> dict:
        return {"method": self.name, "bits": self.bits, "clip": self.clip}

    def describe(self) -> str:
        clip = f", clip {self.clip:g}" if self.clip != 1 else ""
        return f"rtn({self.bits} bits per token{clip}, {self.bits_per_activation():.3f} b/act)"


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class ActivationQuantizerSpec:
    """A registered activation quantizer: ``from_rate(bits, in_features, dim, **options)``."""

    name: str
    summary: str
    from_rate: Callable[..., ActivationQuantizer]
    uses_dim: bool


ACTIVATION_QUANTIZERS: dict[str, ActivationQuantizerSpec] = {}


def register_activation_quantizer(name: str, summary: str, uses_dim: bool):
    def wrap(fn):
        if name in ACTIVATION_QUANTIZERS:
            raise RuntimeError(f"activation quantizer {name!r} registered twice")
        ACTIVATION_QUANTIZERS[name] = ActivationQuantizerSpec(name, summary, fn, uses_dim)
        return fn

    return wrap


@register_activation_quantizer("pvq", "vectors of D projected onto the pyramid P(D, K) per token", uses_dim=True)
def _pvq_from_rate(bits: float, in_features: int, dim: int, gain_bits: int | None = None, **_) -> ActivationQuantizer:
    if in_features % dim:
        raise CodecError(
            f"activation vector size D={dim} does not divide the layer's {in_features} inputs; "
            f"sizes that do: {dims_dividing(in_features, 64)}"
        )
    if gain_bits is None:
        gain_bits = best_act_gain_bits(float(bits), dim, in_features)
    return PyramidActivationQuantizer(in_features, dim, pvq_act_pulses(bits, dim, in_features, gain_bits), gain_bits)


@register_activation_quantizer("rtn", "per-token symmetric round to nearest (QuaRot)", uses_dim=False)
def _rtn_from_rate(bits: float, in_features: int, dim: int | None = None, clip: float = 1.0, **_) -> ActivationQuantizer:
    if float(bits) != int(bits):
        raise CodecError(f"rtn activations take a whole number of bits, got {bits}")
    return RtnActivationQuantizer(in_features, int(bits), clip)


def make_activation_quantizer(method: str, bits: float, in_features: int, dim: int | None = None,
                              **options) -> ActivationQuantizer:
    """The ``method`` quantizer of rows of ``in_features`` at about ``bits`` per activation."""
    if method not in ACTIVATION_QUANTIZERS:
        raise CodecError(f"unknown activation quantizer {method!r}; choose one of {sorted(ACTIVATION_QUANTIZERS)}")
    return ACTIVATION_QUANTIZERS[method].from_rate(bits, in_features, dim, **options)
