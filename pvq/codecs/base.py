"""The codec interface shared by every quantizer family, and the codec registry.

A codec is pure tensor math. It quantizes vectors ``x: [n, D]`` (float) and
knows nothing of models, files or devices. Vectors are grouped: ``G``
consecutive vectors share one stored scale (fp16) and, for codecs with an
offset grid (asymmetric uniform), one zero point. The flow is

    codec  = codec.fit(x, scale)                  # codecs with fitted data (K-means); others: itself
    scales = codec.group_scales(x.view(m, G, D))  # [m]  (fp16-exact floats)
    zeros  = codec.group_zero_points(x.view(m, G, D))  # [m] int, or None
    codes, xhat = codec.encode_decode(x, per_vector(scales), per_vector(zeros))
    stored = codec.store(codes, scales)           # packed codes + fitted data + fp16 scales

Callers that quantize a weight matrix column block by column block (the
Hessian solvers) compute the group parameters once per group and pass them
per vector; :func:`quantize_grouped` does the whole flow for a flat source.

Codes hold per-vector tensors only (every tensor has ``n`` rows). Data that a
fitted codec shares across all vectors of a layer (a K-means codebook) lives
on the codec (:meth:`VectorCodec.data_tensors`), is stored beside the codes by
:meth:`VectorCodec.store`, and is put back by :meth:`VectorCodec.with_data`.

The rate is never a formula alone: :class:`Stored` counts the bytes of the
tensors that would be written to disk.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

Codes = dict[str, torch.Tensor]
"""Unpacked per-vector codes of a codec, keyed by name (all tensors have n rows)."""


from pvq.errors import CodecError  # noqa: E402  (re-exported: the codecs' user error)


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


def check_scales(scale: torch.Tensor, n: int, encoding: bool = True) -> None:
    """Refuse per-vector scales that are not ``[n]`` (and, when encoding, not finite and >= 0)."""
    if tuple(scale.shape) != (n,):
        raise CodecError(f"scale must have shape [{n}] (one per vector), got {tuple(scale.shape)}")
    if encoding and not (torch.isfinite(scale).all() and (scale >= 0).all()):
        raise CodecError("scales must be finite and >= 0")


def fp16_exact(x: torch.Tensor) -> torch.Tensor:
    """Round a float tensor to the nearest fp16 value, returned as float32.

    Scales are stored in fp16, so encoders must use the rounded value.
    Values are clamped to fp16's finite range first.
    """
    return x.float().clamp(-65504.0, 65504.0).half().float()


SCALE_KEY = "scale"
"""Stored key of the fp16 group scales."""


@dataclass
class Stored:
    """What a codec writes to disk for ``num_weights`` weights.

    ``tensors`` maps names to the exact tensors stored (packed codes as uint8,
    scales as fp16, codebooks, ...). The rate is measured from their bytes.
    """

    tensors: dict[str, torch.Tensor]
    num_weights: int

    def storage_bits(self) -> int:
        return sum(t.numel() * t.element_size() * 8 for t in self.tensors.values())

    def bits_per_weight(self) -> float:
        return self.storage_bits() / self.num_weights


class VectorCodec(abc.ABC):
    """Quantizer of vectors of ``dim`` numbers; ``group_size`` vectors share a scale.

    Subclasses set ``name`` and implement the abstract methods. ``encode`` and
    ``decode`` take a per-vector scale ``[n]`` (already fp16-exact) and, for
    codecs whose :meth:`group_zero_points` is not None, a per-vector zero point.
    Codecs without scales return ones from ``group_scales`` and store none.

    Optional parts of the contract, with defaults here:

    * :meth:`group_zero_points` - per-group offset of the grid (None: none);
    * :meth:`fit` / :meth:`data_tensors` / :meth:`with_data` - codecs that fit
      data on the vectors they will code (a K-means codebook); ``fit_importance``
      names the per-coordinate importance the fit wants from a Hessian solver
      (``"hessian"``, ``"obs"`` or None);
    * :meth:`encode_hessian` - codes that minimize ``e h e^T`` for a ``[D, D]``
      quadratic form ``h`` (PVQ's Hessian-optimal gains); absent by default.
    """

    name: ClassVar[str] = ""
    dim: int
    group_size: int
    stores_scale: ClassVar[bool] = True
    fit_importance: str | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            CODEC_CLASSES.setdefault(cls.name, cls)

    def config(self) -> dict:
        """Constructor arguments that rebuild this codec: ``type(self)(**config())``.

        Stored in checkpoints (JSON-serializable values only) and read back by
        :func:`codec_from_config`. Fitted data is not config (see :meth:`data_tensors`).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement config()")

    # ------------------------------------------------------------ group parameters

    @abc.abstractmethod
    def group_scales(self, x: torch.Tensor) -> torch.Tensor:
        """Scale of each group: ``x: [m, G, D]`` -> ``[m]`` float32, fp16-exact."""

    def group_zero_points(self, x: torch.Tensor) -> torch.Tensor | None:
        """Zero point of each group ``x: [m, G, D]`` -> ``[m]`` int64, or None (no offset grid)."""
        return None

    # ------------------------------------------------------------ fitted data

    def fit(
        self, x: torch.Tensor, scale: torch.Tensor, importance: torch.Tensor | None = None
    ) -> VectorCodec:
        """The codec with data fitted on ``x: [n, D]`` (per-vector ``scale: [n]``,
        optional per-coordinate ``importance: [n, D]``); codecs with nothing to fit return self."""
        return self

    @property
    def needs_fit(self) -> bool:
        """True while the codec lacks data that :meth:`fit` provides."""
        return False

    def data_tensors(self) -> dict[str, torch.Tensor]:
        """Fitted data stored once per layer beside the codes (e.g. ``{"codebook": fp16 [k, D]}``)."""
        return {}

    def with_data(self, stored: dict[str, torch.Tensor]) -> VectorCodec:
        """The codec with the fitted data of ``stored`` (the tensors :meth:`store` wrote) put back."""
        return self

    # ------------------------------------------------------------ codes

    @abc.abstractmethod
    def encode(self, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None = None) -> Codes:
        """Codes for ``x: [n, D]`` given per-vector scales ``[n]`` (and zero points ``[n]``)."""

    @abc.abstractmethod
    def decode(self, codes: Codes, scale: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[n, D]`` float32 from codes and per-vector scales."""

    @abc.abstractmethod
    def pack(self, codes: Codes) -> dict[str, torch.Tensor]:
        """Bit-exact storage form (uint8 tensors) of the per-vector codes."""

    @abc.abstractmethod
    def unpack(self, stored: dict[str, torch.Tensor], n: int) -> Codes:
        """Inverse of :meth:`pack` for ``n`` vectors (other stored keys are ignored)."""

    @abc.abstractmethod
    def nominal_bits_per_weight(self) -> float:
        """Rate from the code sizes, scales included (the formula, for choosing)."""

    def store(self, codes: Codes, scales: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every tensor to write for these codes: packed codes, fitted data and the
        fp16 group ``scales`` (``[m]``, any shape that flattens to one per group)."""
        tensors = dict(self.pack(codes))
        tensors.update(self.data_tensors())
        if self.stores_scale:
            tensors[SCALE_KEY] = scales.reshape(-1).half()
        return tensors

    def quantize(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))``; codecs may override with a faster path."""
        return self.encode_decode(x, scale)[1]

    def encode_decode(
        self,
        x: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor | None = None,
        hessian: torch.Tensor | None = None,
    ) -> tuple[Codes, torch.Tensor]:
        """Codes of ``x`` and their reconstruction (bit-identical to ``decode(codes)``).

        With ``hessian`` ([D, D]) the codes come from ``encode_hessian``. Solvers
        call this; codecs whose decode is costly (PVQ's unrank) override it to
        reuse what encoding already computed.
        """
        if hessian is not None:
            codes = self.encode_hessian(x, scale, hessian)
        elif zero is not None:
            codes = self.encode(x, scale, zero)
        else:
            codes = self.encode(x, scale)
        return codes, self.decode(codes, scale)

    def describe(self) -> str:
        return f"{self.name}(D={self.dim}, G={self.group_size})"


@dataclass
class GroupedResult:
    """Result of :func:`quantize_grouped`: reconstruction, codes and stored tensors."""

    xhat: torch.Tensor
    codes: Codes
    stored: Stored
    codec: VectorCodec  # the codec that coded (fitted, for codecs with data)


def quantize_grouped(codec: VectorCodec, x: torch.Tensor) -> GroupedResult:
    """Quantize a flat source ``x: [n, D]`` whose consecutive rows form groups.

    Fits the codec's data on ``x`` first when it has any to fit. Returns the
    reconstruction, the codes and the stored tensors (codes, fitted data and
    fp16 scales), from which the rate is measured. ``n`` must be a multiple of
    the group size.
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
    groups = x.view(n // g, g, d)
    scales = codec.group_scales(groups)
    per_vector = scales.repeat_interleave(g)
    if codec.needs_fit:
        codec = codec.fit(x, per_vector)
        scales = codec.group_scales(groups)  # a fit may set what the scales depend on (ecsq's step)
        per_vector = scales.repeat_interleave(g)
    zeros = codec.group_zero_points(groups)
    codes, xhat = codec.encode_decode(x, per_vector, None if zeros is None else zeros.repeat_interleave(g))
    return GroupedResult(xhat=xhat, codes=codes, stored=Stored(codec.store(codes, scales), num_weights=n * d),
                         codec=codec)


# ---------------------------------------------------------------- registry

CodecFactory = Callable[..., VectorCodec]


@dataclass(frozen=True)
class CodecOption:
    """A user-facing option of a codec family (a keyword of its ``from_rate`` factory).

    The codec owns its options: the method config validates them here and the
    CLI makes one ``--flag`` per option name from these fields.
    type: ``str``, ``int``, ``float`` or ``bool``; default: the factory's
    default (None: the factory picks); choices: allowed values (None: any of the type).
    """

    name: str
    type: type
    default: object
    help: str
    choices: tuple | None = None

    def check(self, value):
        """``value`` validated (ints given for floats become floats); CodecError saying what to pass."""
        if value is None and self.default is None:
            return None
        ok = isinstance(value, self.type) and not (self.type is not bool and isinstance(value, bool))
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise CodecError(f"option {self.name} takes a {self.type.__name__}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise CodecError(f"option {self.name} must be one of {self.choices}, got {value!r}")
        if self.type is int and value < 1:
            raise CodecError(f"option {self.name} must be a positive integer, got {value!r}")
        return value


@dataclass(frozen=True)
class CodecSpec:
    """A registered codec family: ``from_rate(bits, dim, **options)`` builds one."""

    name: str
    from_rate: CodecFactory
    summary: str
    default_dim: int
    dims: tuple[int, ...] | None = None  # allowed dims, None = any >= 1
    options: tuple[CodecOption, ...] = ()

    def option(self, name: str) -> CodecOption | None:
        return next((o for o in self.options if o.name == name), None)

    def check_options(self, options: dict) -> dict:
        """User options validated against :attr:`options`; an unknown name says which exist."""
        out = {}
        for name, value in options.items():
            opt = self.option(name)
            if opt is None:
                known = ", ".join(o.name for o in self.options) or "none"
                raise CodecError(f"codec {self.name!r} has no option {name!r}; its options: {known}")
            out[name] = opt.check(value)
        return out


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
    name: str,
    summary: str,
    default_dim: int,
    dims: tuple[int, ...] | None = None,
    options: tuple[CodecOption, ...] = (),
) -> Callable[[CodecFactory], CodecFactory]:
    """Decorator that registers ``from_rate(bits, dim, **options) -> VectorCodec`` with its
    user-facing :class:`CodecOption` s."""

    def wrap(factory: CodecFactory) -> CodecFactory:
        if name in CODECS:
            raise RuntimeError(f"codec {name!r} registered twice")
        CODECS[name] = CodecSpec(name, factory, summary, default_dim, dims, tuple(options))
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
    declared = {k: v for k, v in options.items() if spec.option(k) is not None}
    options.update(spec.check_options(declared))  # others: internal keywords of the factory
    return spec.from_rate(bits, dim, **options)
