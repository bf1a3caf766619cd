"""Activation quantization of linear layers: the typed setting, its application, a plain-weight layer.

A layer that carries an :class:`ActivationQuant` quantizes its input online, token by token,
before the product (the activation quantizers are pure math: :mod:`pvq.codecs.activation`):

* ``rotate=True`` (default): in the layer's rotated coordinates, ``x' = V x`` with the
  randomized Hadamard the weights already use, so outliers are spread; the product then
  runs in rotated coordinates, ``y = U^T (Q' Qa(V x)) + b`` - with integer weight points
  and integer activation points where a backend can (``act-int``, :mod:`pvq.kernels`);
* ``rotate=False``: ``Qa(x)`` in the layer's own coordinates.

The setting travels with the weight (torchao style): :class:`QuantizedLinear` holds it and
writes it into its checkpoint entry; :class:`ActQuantLinear` gives the same to a plain
``nn.Linear`` whose weight stays in full precision (the "W16" rows of QuaRot-style tables).

Layers that quantize activations run only through backends with
``quantizes_activations = True``: ``act-dense`` here (the float reference: dequantized
activations times ``Q'``) and the integer product of :mod:`pvq.kernels.int_backend`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pvq.codecs.activation import ACTIVATION_QUANTIZERS, ActivationQuantizer, ActPoints, make_activation_quantizer
from pvq.errors import CodecError, QuantizeError
from pvq.transforms import RandomizedHadamard

from .backends import DenseRotatedBackend, register_backend

__all__ = [
    "ActDenseBackend",
    "ActQuantLinear",
    "ActivationQuant",
    "activation_plan_notes",
    "input_points",
    "quantize_rotated_input",
]


@dataclass(frozen=True)
class ActivationQuant:
    """How a layer quantizes its input activations (validated at construction).

    method: a registered activation quantizer (``pvq``, ``rtn``).
    bits: target bits per activation, gains and per-token scales included.
    dim: pvq's vector size D (None: chosen per layer by :meth:`resolve`; ignored by rtn).
    rotate: quantize in the rotated coordinates ``V x`` (the weights' randomized Hadamard).
    clip: rtn's clipping ratio (scale = clip * max|x| / (2^(b-1) - 1)).
    gain_bits: pvq's gains: 0 fp16 per vector, b > 0 b-bit codes + one fp16 norm per token,
        None the best for the rate (chosen by :meth:`resolve`).
    """

    method: str = "pvq"
    bits: float = 4.0
    dim: int | None = None
    rotate: bool = True
    clip: float = 1.0
    gain_bits: int | None = None

    def __post_init__(self):
        if self.method not in ACTIVATION_QUANTIZERS:
            raise QuantizeError(
                f"unknown activation method {self.method!r}; choose one of: {', '.join(sorted(ACTIVATION_QUANTIZERS))}"
            )
        if isinstance(self.bits, bool) or not isinstance(self.bits, (int, float)) or not (
            math.isfinite(self.bits) and 1 <= self.bits < 16
        ):
            raise QuantizeError(f"activation bits must be in [1, 16) (16: leave activations unquantized), got {self.bits!r}")
        object.__setattr__(self, "bits", float(self.bits))
        if self.method == "rtn" and self.bits != int(self.bits):
            raise QuantizeError(f"rtn activations take a whole number of bits, got {self.bits}")
        if self.dim is not None and (not isinstance(self.dim, int) or isinstance(self.dim, bool) or self.dim < 1):
            raise QuantizeError(f"activation dim must be a positive integer or None, got {self.dim!r}")
        if not isinstance(self.rotate, bool):
            raise QuantizeError(f"activation rotate must be True or False, got {self.rotate!r}")
        if isinstance(self.clip, bool) or not isinstance(self.clip, (int, float)) or not 0 < self.clip <= 1:
            raise QuantizeError(f"activation clip ratio must be in (0, 1], got {self.clip!r}")
        object.__setattr__(self, "clip", float(self.clip))
        if self.gain_bits is not None and (
            not isinstance(self.gain_bits, int) or isinstance(self.gain_bits, bool) or not 0 <= self.gain_bits <= 12
        ):
            raise QuantizeError(f"activation gain_bits must be 0 (fp16 gains), 1..12 or None, got {self.gain_bits!r}")

    @property
    def uses_dim(self) -> bool:
        return ACTIVATION_QUANTIZERS[self.method].uses_dim

    def resolve(self, in_features: int, default_dim: int | None = None) -> ActivationQuant:
        """This setting with D and the gain split fixed for a layer of ``in_features`` inputs
        (D: the given one, else ``default_dim``, else the largest divisor of ``in_features`` up to 32)."""
        if not self.uses_dim:
            return replace(self, dim=None, gain_bits=None)
        dim = self.dim or default_dim or max(d for d in range(1, 33) if in_features % d == 0)
        if in_features % dim:
            works = [d for d in range(1, 65) if in_features % d == 0]
            raise QuantizeError(
                f"activation vector size D={dim} does not divide a layer's {in_features} inputs; "
                f"a D that works: {max(d for d in works if d <= 32)} (divisors up to 64: {works})"
            )
        q = self.quantizer(in_features, dim=dim)
        return replace(self, dim=dim, gain_bits=q.config()["gain_bits"])

    def quantizer(self, in_features: int, dim: int | None = None) -> ActivationQuantizer:
        """The pure-math quantizer of this setting for rows of ``in_features``."""
        options = {"clip": self.clip} if self.method == "rtn" else {"gain_bits": self.gain_bits}
        try:
            return make_activation_quantizer(self.method, self.bits, in_features, dim or self.dim, **options)
        except CodecError as e:
            raise QuantizeError(f"activation quantization {self.describe()}: {e}") from e

    def describe(self) -> str:
        parts = [f"{self.method} {self.bits:g} bits"]
        if self.uses_dim and self.dim:
            parts.append(f"D={self.dim}")
        if self.method == "rtn" and self.clip != 1:
            parts.append(f"clip {self.clip:g}")
        parts.append("rotated" if self.rotate else "not rotated")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ActivationQuant:
        known = {"method", "bits", "dim", "rotate", "clip", "gain_bits"}
        unknown = set(d) - known - {"bits_per_activation"}
        if unknown:
            raise QuantizeError(f"unknown activation setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: v for k, v in d.items() if k in known})


def activation_plan_notes(act: ActivationQuant, plans: list) -> list[str]:
    """Check ``act`` on every planned layer and describe it per input size (``plans``: the
    :class:`pvq.models.methods.LayerPlan` s, with ``in_features`` and the weights' ``dim``).

    A D that does not divide every layer is refused, naming one that does; a note says where
    activation and weight vectors do not nest (no integer product there)."""
    sizes = sorted({p.in_features for p in plans})
    common = math.gcd(*sizes)
    if act.uses_dim and act.dim is not None and common % act.dim:
        works = [d for d in range(1, min(common, 64) + 1) if common % d == 0]
        raise QuantizeError(
            f"activation vector size D={act.dim} does not divide the input sizes "
            f"{[n for n in sizes if n % act.dim]} of some linear layers; a D that works: "
            f"{max(d for d in works if d <= 32)} (D that divide every layer: {works})"
        )
    notes, seen = [], {}
    for p in plans:
        if p.in_features in seen:
            continue
        r = act.resolve(p.in_features, p.dim if p.dim > 1 else None)
        q = r.quantizer(p.in_features)
        seen[p.in_features] = q
        notes.append(f"activations of in={p.in_features}: {q.describe()}, {'rotated' if act.rotate else 'not rotated'}")
        slice_ = q.slice
        if p.dim > 1 and max(slice_, p.dim) % min(slice_, p.dim):
            notes.append(f"in={p.in_features}: activation vectors of {slice_} and weight vectors of {p.dim} do not "
                         "nest: these layers run the float (dequantized) product, not the integer one")
    return notes


def input_points(layer, x: torch.Tensor, quantize: Callable[[torch.Tensor], ActPoints] | None = None) -> ActPoints:
    """The activation points and gains (:class:`~pvq.codecs.activation.ActPoints`) of a layer's
    input rows ``x: [n, in]``: rotated first when ``act_quant.rotate``. The rotation runs in
    float64, so a token's codes do not depend on the other rows of the batch (a float32
    matmul's rounding may change with the batch size; float64 rounding almost never moves a
    decision of the float64 projection). ``layer`` has ``act_quant``, ``act_quantizer`` and
    ``rotate_input``. ``quantize``: what quantizes the (rotated) rows, the same math as
    ``layer.act_quantizer.quantize`` (the default), e.g. a kernel of :mod:`pvq.kernels.act_projection`."""
    if layer.act_quant.rotate:
        x = layer.rotate_input(x.double())
    return (quantize or layer.act_quantizer.quantize)(x)


def quantize_rotated_input(layer, x: torch.Tensor) -> torch.Tensor:
    """The layer's input, activation-quantized (dequantized to ``x``'s dtype), in its rotated
    coordinates ``V x`` (``x`` itself when it has no rotation)."""
    flat = x.reshape(-1, x.shape[-1])
    xh = input_points(layer, flat).dequantize().to(x.dtype).reshape(x.shape)
    return xh if layer.act_quant.rotate else layer.rotate_input(xh)


class ActDenseBackend(DenseRotatedBackend):
    """Activation-quantized layers, float reference: ``y = U^T (Q' x_hat') + b`` with
    ``x_hat'`` the dequantized activation points (any weight codec, any device)."""

    name = "act-dense"
    priority = 0
    quantizes_activations = True

    def linear(self, layer, runtime, x):
        y = layer.unrotate_output(F.linear(quantize_rotated_input(layer, x), runtime["rotated_weight"]))
        return y if layer.bias is None else y + layer.bias.to(y.dtype)


register_backend(ActDenseBackend())


class ActQuantLinear(nn.Module):
    """A plain linear whose weight stays in full precision and whose input is quantized.

    ``y = (W V^T) Qa(V x) + b`` with ``V`` a randomized Hadamard of ``in_features`` (seed
    ``seed``) when ``act.rotate``, else ``y = W Qa(x) + b``. For tables of activation-only
    quantization (no checkpoint format: quantize the weights to save one).
    """

    def __init__(self, linear: nn.Linear, act: ActivationQuant, seed: int = 0):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.act_quant = act.resolve(self.in_features)
        self.act_quantizer = self.act_quant.quantizer(self.in_features)
        self.rotation = RandomizedHadamard(self.in_features, seed) if self.act_quant.rotate else None
        w = linear.weight.detach()
        with torch.no_grad():
            w = w if self.rotation is None else self.rotation.forward(w.double()).to(w.dtype)  # rows: V w = (W V^T)
        self.weight = nn.Parameter(w.clone(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def rotate_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.rotation is None else self.rotation.forward(x)

    def bits_per_activation(self) -> float:
        return self.act_quantizer.bits_per_activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(quantize_rotated_input(self, x), self.weight.to(x.dtype),
                        None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, act={self.act_quantizer.describe()}"
