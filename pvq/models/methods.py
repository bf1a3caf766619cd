"""Quantization methods (a registry) and the typed configuration of one quantization run.

A method names a codec and the solver ingredients around it:

* ``pvq``  - randomized Hadamard on both sides, PVQ shapes + Beta-law gains
  (codec ``pvq``), block-LDLQ error feedback, Hessian-optimal gains.
* ``gptq`` - codec ``uniform`` (D = 1, groups of 128 weights), GPTQ error feedback.
* ``rtn``  - codec ``uniform``, round to nearest (no feedback, no rotation).
* ``e8``   - randomized Hadamard + codec ``e8`` (D = 8) + LDLQ error feedback.
* ``codebook`` - LLM-Codebook: codec ``kmeans``; per layer one codebook fitted by
  K-means weighted with Hessian importances (``codebook_weighting``), stored with
  the layer, then codes assigned through block LDLQ (codebook fixed).

Adding a method is one :func:`register_method` call with a :class:`MethodSpec`.

:class:`QuantizeConfig` is validated at construction; :meth:`QuantizeConfig.plan`
(alias :meth:`~QuantizeConfig.validate_for`) checks it against a model's linear
layers and builds every layer's codec before any long work starts.

Units: ``bits`` are bits per weight, scales included (the codec picks the
setting whose stored rate is at most about ``bits``); ``dim`` (D) is the number
of consecutive input columns in one vector; ``group_size`` (G) is the number of
vectors that share one stored scale (for D = 1 that is GPTQ's "group size" in
weights).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, field, fields, replace
import torch

from pvq.codecs import CODECS, CodecError, VectorCodec, codec_to_config, make_codec

__all__ = [
    "METHODS",
    "LayerPlan",
    "MethodSpec",
    "QuantizeConfig",
    "QuantizeError",
    "QuantizePlan",
    "decoder_layers",
    "get_method",
    "register_method",
]


class QuantizeError(CodecError):
    """Bad quantization input (method, rate, layout, model, data); says what to change."""


# ---------------------------------------------------------------- method registry


@dataclass(frozen=True)
class MethodSpec:
    """A quantization method: a codec family plus the solver ingredients used with it.

    codec: registered codec name (``pvq.codecs.CODECS``).
    rotate / error_feedback / hessian_gain: defaults of the switches in
        :class:`QuantizeConfig` (a config may turn an ingredient off, or on
        where the codec supports it).
    default_dim: D when the config gives none (``None``: the codec's default).
    default_group_size: vectors per scale when the config gives none.
    codec_options: names of :class:`QuantizeConfig` fields passed to the codec
        factory as keyword arguments (when not ``None``).
    group_option: the factory's keyword for the group: ``"group_size"``
        (vectors per scale) or ``"group_weights"`` (weights per scale).
    """

    name: str
    codec: str
    summary: str
    rotate: bool
    error_feedback: bool
    hessian_gain: bool
    default_dim: int | None
    default_group_size: int
    codec_options: tuple[str, ...] = ()
    group_option: str = "group_size"


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method to :data:`METHODS` (names are unique)."""
    if spec.name in METHODS:
        raise RuntimeError(f"method {spec.name!r} registered twice")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise QuantizeError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]


PVQ_OPTIONS = ("gain_quantizer", "gain_target", "search", "gain_bits")
SCALAR_OPTIONS = ("symmetric",)

register_method(MethodSpec(
    "pvq", "pvq", "randomized Hadamard + PVQ shapes and Beta-law gains + block-LDLQ + Hessian-optimal gains",
    rotate=True, error_feedback=True, hessian_gain=True, default_dim=32, default_group_size=16,
    codec_options=PVQ_OPTIONS,
))
register_method(MethodSpec(
    "gptq", "uniform", "GPTQ: uniform scalar grid per group of 128 weights with error feedback",
    rotate=False, error_feedback=True, hessian_gain=False, default_dim=1, default_group_size=128,
    codec_options=SCALAR_OPTIONS, group_option="group_weights",
))
register_method(MethodSpec(
    "rtn", "uniform", "round to nearest on a uniform grid per group of 128 weights",
    rotate=False, error_feedback=False, hessian_gain=False, default_dim=1, default_group_size=128,
    codec_options=SCALAR_OPTIONS, group_option="group_weights",
))
register_method(MethodSpec(
    "codebook", "kmeans",
    "LLM-Codebook: one Hessian-weighted K-means codebook per layer (stored, counted) + block-LDLQ assignment",
    rotate=False, error_feedback=True, hessian_gain=False, default_dim=4, default_group_size=32,
    group_option="group_weights",
))
register_method(MethodSpec(
    "e8", "e8", "randomized Hadamard + E8 lattice codebook + block-LDLQ (QuIP#-style)",
    rotate=True, error_feedback=True, hessian_gain=False, default_dim=8, default_group_size=32,
))


# ---------------------------------------------------------------- config


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_CHOICES = {
    "gain_quantizer": ("lloydmax", "quantile"),
    "gain_target": ("projection", "norm"),
    "search": ("greedy", "refine"),
    "codebook_weighting": ("hessian", "obs", "none"),
}
CODEBOOK_OPTIONS = ("codebook_weighting", "lora_steps")  # options of the methods whose codec fits a codebook


@dataclass(frozen=True)
class QuantizeConfig:
    """Everything that decides a quantization run (JSON round trip: to_dict / from_dict).

    method: a name in :data:`METHODS`.
    bits: target bits per weight, scales included (> 0).
    dim: vector dim D (``None``: the method's default, lowered to a D that
        divides every layer if needed); an explicit D must divide every layer.
    group_size: vectors per stored scale (``None``: the method's default, per
        layer the nearest count that divides the layer); an explicit value must
        divide every layer.
    damp: Hessian damping relative to its mean diagonal.
    seed: seeds the calibration windows and the rotations.
    n_samples, seq_len: calibration windows (sized for the reference model).
    rotate, error_feedback, hessian_gain: switch a method's ingredients
        (``None``: the method's default).
    gain_quantizer, gain_target, search, gain_bits: PVQ codec options
        (``gain_bits=None`` lets the codec pick the gain/shape split).
    symmetric: uniform grid without zero point (gptq, rtn).
    sequential: quantize a block's linears stage by stage (q/k/v, o, gate/up,
        down), each stage's Hessian taken with the earlier stages quantized.
    codebook_weighting: method ``codebook``: per-coordinate K-means importances
        ``"hessian"`` (diag H), ``"obs"`` (w^2 / [H^-1]_ii) or ``"none"`` (plain K-means).
    lora_steps: method ``codebook``: LoRA recovery steps on the calibration
        windows after each chunk of blocks (0: none; see :mod:`pvq.models.lora`).
    """

    method: str = "pvq"
    bits: float = 3.0
    dim: int | None = None
    group_size: int | None = None
    damp: float = 0.01
    seed: int = 0
    n_samples: int = 64
    seq_len: int = 256
    rotate: bool | None = None
    error_feedback: bool | None = None
    hessian_gain: bool | None = None
    gain_quantizer: str = "lloydmax"
    gain_target: str = "projection"
    search: str = "greedy"
    gain_bits: int | None = None
    symmetric: bool = False
    sequential: bool = True
    codebook_weighting: str = "hessian"
    lora_steps: int = 0

    def __post_init__(self):
        spec = get_method(self.method)
        if isinstance(self.bits, bool) or not isinstance(self.bits, (int, float)) or not (
            math.isfinite(self.bits) and self.bits > 0
        ):
            raise QuantizeError(f"bits (per weight) must be a positive number, got {self.bits!r}")
        object.__setattr__(self, "bits", float(self.bits))
        for name in ("dim", "group_size", "gain_bits"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or v < 1):
                raise QuantizeError(f"{name} must be a positive integer or None, got {v!r}")
        if isinstance(self.damp, bool) or not isinstance(self.damp, (int, float)) or not (
            math.isfinite(self.damp) and self.damp >= 0
        ):
            raise QuantizeError(f"damp must be a finite number >= 0, got {self.damp!r}")
        object.__setattr__(self, "damp", float(self.damp))
        if not _is_int(self.seed):
            raise QuantizeError(f"seed must be an integer, got {self.seed!r}")
        if not _is_int(self.n_samples) or self.n_samples < 1:
            raise QuantizeError(f"n_samples must be an integer >= 1, got {self.n_samples!r}")
        if not _is_int(self.seq_len) or self.seq_len < 2:
            raise QuantizeError(f"seq_len must be an integer >= 2, got {self.seq_len!r}")
        for name in ("rotate", "error_feedback", "hessian_gain"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, bool):
                raise QuantizeError(f"{name} must be True, False or None, got {v!r}")
        for name in ("symmetric", "sequential"):
            if not isinstance(getattr(self, name), bool):
                raise QuantizeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not _is_int(self.lora_steps) or self.lora_steps < 0:
            raise QuantizeError(f"lora_steps must be an integer >= 0, got {self.lora_steps!r}")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise QuantizeError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        # options that the method's codec does not take must stay at their defaults
        defaults = {f.name: f.default for f in fields(QuantizeConfig)}
        for name in CODEBOOK_OPTIONS:
            if spec.codec != "kmeans" and getattr(self, name) != defaults[name]:
                raise QuantizeError(
                    f"option {name}={getattr(self, name)!r} does not apply to method {self.method!r}; "
                    f"it applies to: {', '.join(m for m, s in METHODS.items() if s.codec == 'kmeans')}"
                )
        for name in PVQ_OPTIONS + SCALAR_OPTIONS:
            if name not in spec.codec_options and getattr(self, name) != defaults[name]:
                raise QuantizeError(
                    f"option {name}={getattr(self, name)!r} does not apply to method {self.method!r} "
                    f"(codec {spec.codec!r}); it applies to: "
                    f"{', '.join(m for m, s in METHODS.items() if name in s.codec_options)}"
                )
        if spec.codec not in CODECS:
            raise QuantizeError(
                f"method {self.method!r} needs codec {spec.codec!r}, which is not registered in this "
                f"install (registered: {', '.join(sorted(CODECS))})"
            )
        cspec = CODECS[spec.codec]
        if self.dim is not None and cspec.dims is not None and self.dim not in cspec.dims:
            raise QuantizeError(f"method {self.method!r} (codec {spec.codec!r}) works on dim in {cspec.dims}, got {self.dim}")
        if self.dim is not None and self.group_size is not None:
            self.make_codec(self.dim, self.group_size)  # a rate no setting reaches fails here

    # -- effective switches
    @property
    def spec(self) -> MethodSpec:
        return METHODS[self.method]

    @property
    def use_rotation(self) -> bool:
        return self.spec.rotate if self.rotate is None else self.rotate

    @property
    def use_error_feedback(self) -> bool:
        return self.spec.error_feedback if self.error_feedback is None else self.error_feedback

    @property
    def use_hessian_gain(self) -> bool:
        return self.spec.hessian_gain if self.hessian_gain is None else self.hessian_gain

    def default_dim(self) -> int:
        spec = self.spec
        return spec.default_dim if spec.default_dim is not None else CODECS[spec.codec].default_dim

    # -- codecs
    def codec_kwargs(self, dim: int, group_size: int) -> dict:
        """Keyword arguments for the codec factory (group size in the factory's own unit)."""
        spec = self.spec
        kwargs = {name: getattr(self, name) for name in spec.codec_options if getattr(self, name) is not None}
        kwargs[spec.group_option] = group_size * dim if spec.group_option == "group_weights" else group_size
        return kwargs

    def make_codec(self, dim: int, group_size: int) -> VectorCodec:
        """The codec of a layer quantized with D = ``dim`` and G = ``group_size``."""
        try:
            codec = make_codec(self.spec.codec, self.bits, dim, **self.codec_kwargs(dim, group_size))
        except QuantizeError:
            raise
        except CodecError as e:
            raise QuantizeError(
                f"method {self.method!r} at {self.bits} bits per weight, D={dim}, G={group_size}: {e}"
            ) from e
        except TypeError as e:  # a factory that does not take an option
            raise QuantizeError(f"codec {self.spec.codec!r} rejected the options of method {self.method!r}: {e}") from e
        if codec.dim != dim or codec.group_size != group_size:
            raise QuantizeError(
                f"codec {self.spec.codec!r} built D={codec.dim}, G={codec.group_size} when asked for "
                f"D={dim}, G={group_size}"
            )
        if self.use_hessian_gain and not callable(getattr(codec, "encode_hessian", None)):
            raise QuantizeError(
                f"hessian_gain=True needs a codec with Hessian-optimal gains (encode_hessian); codec "
                f"{self.spec.codec!r} has none: pass hessian_gain=False"
            )
        try:
            codec_to_config(codec)
        except NotImplementedError as e:
            raise QuantizeError(
                f"codec {self.spec.codec!r} cannot be stored in a checkpoint yet (it has no config()); "
                f"method {self.method!r} is unavailable in this install"
            ) from e
        return codec

    # -- serialization
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> QuantizeConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise QuantizeError(f"unknown quantize option(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def replace(self, **changes) -> QuantizeConfig:
        return replace(self, **changes)

    # -- model checks
    def plan(self, model: torch.nn.Module) -> QuantizePlan:
        """Check this config against the model and build every layer's codec (fast).

        Raises :class:`QuantizeError` naming what to change: no decoder blocks,
        a D or G that does not divide a layer (listing the values that do), a
        rate that no codec setting reaches.
        """
        layers = decoder_layers(model)
        linears: list[tuple[int, str, torch.nn.Linear]] = []
        for i, block in enumerate(layers):
            for name, mod in block.named_modules():
                if isinstance(mod, torch.nn.Linear):
                    linears.append((i, f"{_layers_prefix(model)}.{i}.{name}", mod))
        if not linears:
            raise QuantizeError("the model's decoder blocks hold no nn.Linear layers to quantize")
        in_sizes = sorted({m.in_features for _, _, m in linears})
        dim = self._pick_dim(in_sizes)
        plans: list[LayerPlan] = []
        codecs: dict[tuple[int, int], VectorCodec] = {}
        for block, name, mod in linears:
            g = self._pick_group(mod.in_features, dim, name)
            if (dim, g) not in codecs:
                codecs[(dim, g)] = self.make_codec(dim, g)
            rot = None
            if self.use_rotation:
                rot = {"out_seed": _seed(self.seed, name, "out"), "in_seed": _seed(self.seed, name, "in")}
            plans.append(LayerPlan(block, name, mod.out_features, mod.in_features, dim, g, codecs[(dim, g)], rot))
        return QuantizePlan(self, plans, len(layers))

    validate_for = plan

    def _pick_dim(self, in_sizes: list[int]) -> int:
        cspec = CODECS[self.spec.codec]
        common = math.gcd(*in_sizes)
        allowed = [d for d in range(1, common + 1) if common % d == 0 and (cspec.dims is None or d in cspec.dims)]
        if self.dim is not None:
            if common % self.dim:
                bad = [n for n in in_sizes if n % self.dim]
                raise QuantizeError(
                    f"dim D={self.dim} does not divide the input sizes {bad} of some linear layers; "
                    f"dims that divide every layer: {allowed or 'none'}"
                )
            return self.dim
        want = self.default_dim()
        if common % want == 0:
            return want
        fit = [d for d in allowed if d <= want]
        if not fit:
            raise QuantizeError(
                f"codec {self.spec.codec!r} needs D in {cspec.dims}, and none divides every layer's "
                f"input size {in_sizes}; this method cannot quantize this model"
            )
        return max(fit)

    def _pick_group(self, in_features: int, dim: int, name: str) -> int:
        vectors = in_features // dim
        divisors = [g for g in range(1, vectors + 1) if vectors % g == 0]
        if self.group_size is not None:
            if vectors % self.group_size:
                raise QuantizeError(
                    f"group_size G={self.group_size} (vectors of D={dim}, {self.group_size * dim} columns) "
                    f"does not divide {name} (in_features={in_features}, {vectors} vectors per row); "
                    f"group sizes that divide it: {divisors}; or leave group_size unset to pick one per layer"
                )
            return self.group_size
        want = self.spec.default_group_size
        # nearest divisor in log scale (ties: the larger one, fewer scales)
        return min(divisors, key=lambda g: (abs(math.log(g / want)), -g))

    def __str__(self) -> str:
        parts = [f"{self.method} {self.bits:g} bits"]
        if self.dim:
            parts.append(f"D={self.dim}")
        if self.group_size:
            parts.append(f"G={self.group_size}")
        return ", ".join(parts)


def _seed(seed: int, name: str, side: str) -> int:
    """Deterministic 31-bit rotation seed of one side of one layer."""
    return zlib.crc32(f"{seed}:{name}:{side}".encode()) & 0x7FFFFFFF


# ---------------------------------------------------------------- plan


@dataclass
class LayerPlan:
    """How one linear layer will be quantized (names are full module paths)."""

    block: int
    name: str
    out_features: int
    in_features: int
    dim: int
    group_size: int
    codec: VectorCodec
    rotation: dict | None  # {"out_seed": int, "in_seed": int} or None


@dataclass
class QuantizePlan:
    """The checked plan of a run: the config and one :class:`LayerPlan` per linear layer."""

    config: QuantizeConfig
    layers: list[LayerPlan]
    num_blocks: int
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        groups = {(p.dim, p.group_size) for p in self.layers}
        if self.config.group_size is None and len({g for _, g in groups}) > 1:
            self.notes.append(
                "group size per layer: "
                + ", ".join(f"in={p.in_features}: G={p.group_size}" for p in _unique_by_in(self.layers))
            )

    def layer(self, name: str) -> LayerPlan:
        for p in self.layers:
            if p.name == name:
                return p
        raise KeyError(name)

    def by_block(self, block: int) -> list[LayerPlan]:
        return [p for p in self.layers if p.block == block]


def _unique_by_in(plans: list[LayerPlan]) -> list[LayerPlan]:
    seen, out = set(), []
    for p in plans:
        if p.in_features not in seen:
            seen.add(p.in_features)
            out.append(p)
    return out


# ---------------------------------------------------------------- model structure


LAYERS_PATH = "model.layers"


def _layers_prefix(model: torch.nn.Module) -> str:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise QuantizeError(
            f"cannot find the decoder blocks of {type(model).__name__}: expected a ModuleList at "
            "model.model.layers (Llama, Mistral, Qwen2 and most decoder-only transformers models)"
        )
    return LAYERS_PATH


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The ModuleList of decoder blocks (``model.model.layers`` for Llama, Mistral, Qwen2)."""
    obj = model
    for part in _layers_prefix(model).split("."):
        obj = getattr(obj, part)
    if len(obj) == 0:
        raise QuantizeError(f"{type(model).__name__} has no decoder blocks")
    return obj


def describe_methods() -> list[tuple[str, str]]:
    """(name, summary) of every registered method."""
    return [(m.name, m.summary) for m in METHODS.values()]

