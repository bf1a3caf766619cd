"""The codec interface shared by every quantizer family, and the codec registry.

A codec is pure tensor math. It quantizes vectors ``x: [n, D]`` (float) and
knows nothing of models, files or devices. Vectors are grouped: ``G``
consecutive vectors share one stored scale (fp16). The flow is

    scales = codec.group_scales(x.view(m, G, D))       # [m]  (fp16-exact floats)
    codes  = codec.encode(x, scales.repeat_interleave(G))  # per-vector scale [n]
    xhat   = codec.decode(codes, scales.repeat_interleave(G))
    stored = codec.pack(codes)                          # dict of uint8 tensors

Callers that quantize a weight matrix column block by column block (the
Hessian solvers) compute the scales once per group and pass per-vector
scales; :func:`quantize_grouped` does the whole flow for a flat source.

The rate is never a formula alone: :class:`Stored` counts the bytes of the
tensors that would be written to disk.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch

Codes = dict[str, torch.Tensor]
"""Unpacked per-vector codes of a codec, keyed by name (all tensors have n rows)."""


class CodecError(ValueError):
    """Bad codec arguments or input; the message says what to change."""


def check_finite(x: torch.Tensor, what: str = "input") -> None:
    """Raise :class:`CodecError` if ``x`` holds NaN or inf."""
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise CodecError(
            f"{what} holds {bad} non-finite value(s) (NaN or inf); "
            "clean or clamp the tensor before quantizing it"
        )


def check_vectors(x: torch.Tensor, dim: int, what: str = "input") -> None:
    """Check that ``x`` is a finite float tensor of shape [n, dim]."""
    if x.dim() != 2 or x.shape[1] != dim:
        raise CodecError(f"{what} must have shape [n, {dim}], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise CodecError(f"{what} must be a float tensor, got {x.dtype}")
    check_finite(x, what)


def fp16_exact(x: torch.Tensor) -> torch.Tensor:
    """Round a float tensor to the nearest fp16 value, returned as float32.

    Scales are stored in fp16, so encoders must use the rounded value.
    Values are clamped to fp16's finite range first.
    """
    return x.float().clamp(-65504.0, 65504.0).half().float()


@dataclass
class Stored:
    """What a codec writes to disk for ``num_weights`` weights.

    ``tensors`` maps names to the exact tensors stored (packed codes as uint8,
    scales as fp16, codebooks, ...). The rate is measured from their bytes.
    """

    tensors: dict[str, torch.Tensor]
    num_weights: int
    meta: dict[str, int | float | str] = field(default_factory=dict)

    def storage_bits(self) -> int:
        return sum(t.numel() * t.element_size() * 8 for t in self.tensors.values())

    def bits_per_weight(self) -> float:
        return self.storage_bits() / self.num_weights


class VectorCodec(abc.ABC):
    """Quantizer of vectors of ``dim`` numbers; ``group_size`` vectors share a scale.

    Subclasses set ``name`` and implement the abstract methods. ``encode`` and
    ``decode`` take a per-vector scale ``[n]`` (already fp16-exact).
    Codecs without scales return ones from ``group_scales`` and store none.
    """

    name: ClassVar[str] = ""
    dim: int
    group_size: int
    stores_scale: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            CODEC_CLASSES.setdefault(cls.name, cls)

    def config(self) -> dict:
        """Constructor arguments that rebuild this codec: ``type(self)(**config())``.

        Stored in checkpoints (JSON-serializable values only) and read back by
        :func:`codec_from_config`.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement config()")

    @abc.abstractmethod
    def group_scales(self, x: torch.Tensor) -> torch.Tensor:
        """Scale of each group: ``x: [m, G, D]`` -> ``[m]`` float32, fp16-exact."""

    @abc.abstractmethod
    def encode(self, x: torch.Tensor, scale: torch.Tensor) -> Codes:
        """Codes for ``x: [n, D]`` given per-vector scales ``[n]``."""

    @abc.abstractmethod
    def decode(self, codes: Codes, scale: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[n, D]`` float32 from codes and per-vector scales."""

    @abc.abstractmethod
    def pack(self, codes: Codes) -> dict[str, torch.Tensor]:
        """Bit-exact storage form (uint8 tensors and any codebook) of the codes."""

    @abc.abstractmethod
    def unpack(self, stored: dict[str, torch.Tensor], n: int) -> Codes:
        """Inverse of :meth:`pack` for ``n`` vectors."""

    @abc.abstractmethod
    def nominal_bits_per_weight(self) -> float:
        """Rate from the code sizes, scales included (the formula, for choosing)."""

    def quantize(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))``; codecs may override with a faster path."""
        return self.decode(self.encode(x, scale), scale)

    def encode_decode(
        self, x: torch.Tensor, scale: torch.Tensor, hessian: torch.Tensor | None = None
    ) -> tuple[Codes, torch.Tensor]:
        """Codes of ``x`` and their reconstruction (bit-identical to ``decode(codes)``).

        With ``hessian`` ([D, D]) the codes come from ``encode_hessian``. Solvers
        call this; codecs whose decode is costly (PVQ's unrank) override it to
        reuse what encoding already computed.
        """
        codes = self.encode(x, scale) if hessian is None else self.encode_hessian(x, scale, hessian)
        return codes, self.decode(codes, scale)

    def describe(self) -> str:
        return f"{self.name}(D={self.dim}, G={self.group_size})"


@dataclass
class GroupedResult:
    """Result of :func:`quantize_grouped`: reconstruction, codes and stored tensors."""

    xhat: torch.Tensor
    codes: Codes
    stored: Stored


def quantize_grouped(codec: VectorCodec, x: torch.Tensor) -> GroupedResult:
    """Quantize a flat source ``x: [n, D]`` whose consecutive rows form groups.

    Returns the reconstruction and the stored tensors (codes and fp16 scales),
    from which the rate is measured. ``n`` must be a multiple of the group size.
    """
    check_vectors(x, codec.dim)
    n, d = x.shape
    g = codec.group_size
    if n % g:
        raise CodecError(
            f"{n} vectors do not split into groups of {g}; pass a multiple of {g} vectors "
            "or choose a group size that divides the count"
        )
    x = x.float()
    scales = codec.group_scales(x.view(n // g, g, d))
    per_vector = scales.repeat_interleave(g)
    codes = codec.encode(x, per_vector)
    xhat = codec.decode(codes, per_vector)
    tensors = dict(codec.pack(codes))
    if codec.stores_scale:
        tensors["scale"] = scales.half()
    return GroupedResult(xhat=xhat, codes=codes, stored=Stored(tensors, num_weights=n * d))


# ---------------------------------------------------------------- registry

CodecFactory = Callable[..., VectorCodec]


@dataclass(frozen=True)
class CodecSpec:
    """A registered codec family: ``from_rate(bits, dim, **options)`` builds one."""

    name: str
    from_rate: CodecFactory
    summary: str
    default_dim: int
    dims: tuple[int, ...] | None = None  # allowed dims, None = any >= 1


CODECS: dict[str, CodecSpec] = {}
CODEC_CLASSES: dict[str, type[VectorCodec]] = {}


def codec_to_config(codec: VectorCodec) -> dict:
    """``{"name": ..., **constructor arguments}`` for a checkpoint's JSON config."""
    return {"name": codec.name, **codec.config()}


def codec_from_config(config: dict) -> VectorCodec:
    """Rebuild a codec from :func:`codec_to_config` output."""
    config = dict(config)
    name = config.pop("name", None)
    if name not in CODEC_CLASSES:
        raise CodecError(f"unknown codec {name!r} in config; known: {', '.join(sorted(CODEC_CLASSES))}")
    return CODEC_CLASSES[name](**config)


def register_codec(
    name: str, summary: str, default_dim: int, dims: tuple[int, ...] | None = None
) -> Callable[[CodecFactory], CodecFactory]:
    """Decorator that registers ``from_rate(bits, dim, **options) -> VectorCodec``."""

    def wrap(factory: CodecFactory) -> CodecFactory:
        if name in CODECS:
            raise RuntimeError(f"codec {name!r} registered twice")
        CODECS[name] = CodecSpec(name, factory, summary, default_dim, dims)
        return factory

    return wrap


def make_codec(name: str, bits: float, dim: int | None = None, **options) -> VectorCodec:
    """Build the registered codec ``name`` at about ``bits`` bits per weight."""
    if name not in CODECS:
        raise CodecError(f"unknown codec {name!r}; choose one of: {', '.join(sorted(CODECS))}")
    spec = CODECS[name]
    dim = spec.default_dim if dim is None else dim
    if spec.dims is not None and dim not in spec.dims:
        raise CodecError(f"codec {name!r} works on dim in {spec.dims}, got dim={dim}")
    if not (isinstance(bits, (int, float)) and math.isfinite(bits) and bits > 0):
        raise CodecError(f"bits per weight must be a positive number, got {bits!r}")
    return spec.from_rate(bits, dim, **options)
