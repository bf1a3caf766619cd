"""Quantization methods (a registry) and the typed configuration of one quantization run.

A method names a codec and the solver ingredients around it:

* ``pvq``  - randomized Hadamard on both sides, PVQ shapes + Beta-law gains
  (codec ``pvq``), block-LDLQ error feedback, Hessian-optimal gains.
* ``gptq`` - codec ``uniform`` (D = 1, groups of 128 weights), GPTQ error feedback.
* ``rtn``  - codec ``uniform``, round to nearest (no feedback, no rotation).
* ``e8``   - randomized Hadamard + codec ``e8`` (D = 8) + LDLQ error feedback.
* ``lattice`` - randomized Hadamard + nested-lattice (Voronoi) codes (codec
  ``lattice``, option ``lattice``: e8, dn, an_star, zn) + LDLQ error feedback.
* ``trellis`` - randomized Hadamard + QTIP-style bitshift trellis (codec
  ``trellis``, options ``state_bits``, ``code``) + LDLQ error feedback.
* ``codebook`` - LLM-Codebook: codec ``kmeans``; per layer one codebook fitted by
  K-means weighted with Hessian importances (the codec's ``weighting`` option),
  stored with the layer, then codes assigned through block LDLQ (codebook fixed).

Adding a method is one :func:`register_method` call with a :class:`MethodSpec`;
its options are its codec's (:class:`pvq.codecs.CodecOption`), validated by the
codec spec and turned into CLI flags from there.

:class:`QuantizeConfig` is validated at construction; :meth:`QuantizeConfig.plan`
checks it against a model's linear layers and builds every layer's codec
before any long work starts.

Units: ``bits`` are bits per weight, scales included (the codec picks the
setting whose stored rate is at most about ``bits``); ``dim`` (D) is the number
of consecutive input columns in one vector; ``group_size`` (G) is the number of
vectors that share one stored scale (for D = 1 that is GPTQ's "group size" in
weights).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

import torch

from pvq.codecs import CODECS, VectorCodec, codec_to_config, make_codec
from pvq.errors import CodecError, QuantizeError
from pvq.solvers import SolverConfig

from .activations import ActivationQuant
from .rotation_plan import FUSED_DEFAULT_MIN_BITS, ROTATION_PLANS, default_rotation_plan
from .structure import decoder_layers

__all__ = [
    "METHODS",
    "MethodSpec",
    "QuantizeConfig",
    "QuantizeError",
    "decoder_layers",
    "get_method",
    "register_method",
]


# ---------------------------------------------------------------- method registry


@dataclass(frozen=True)
class MethodSpec:
    """A quantization method: a codec family plus the solver ingredients used with it.

    codec: registered codec name (``pvq.codecs.CODECS``); the method's options
        are that codec's :class:`~pvq.codecs.CodecOption` s.
    rotate / error_feedback / hessian_gain: defaults of the switches in
        :class:`QuantizeConfig` (a config may turn an ingredient off, or on
        where the codec supports it).
    default_dim: D when the config gives none (``None``: the codec's default).
    default_group_size: vectors per scale when the config gives none.
    group_option: the factory's keyword for the group: ``"group_size"``
        (vectors per scale) or ``"group_weights"`` (weights per scale).
    max_vector_bits: when set, the default D is lowered until ``bits * D`` is at
        most this (codebooks: a K-means codebook of 2^(bits D) centroids must stay small).
    static_groups / act_order: defaults of the solver switches of the same names
        (:class:`~pvq.solvers.SolverConfig`).
    fused_from_bits: a method that rotates runs the ``fused`` rotation plan by default from this
        many bits per weight, ``layer`` below (None: ``layer`` at every rate); set where the
        measurements support it (docs/rotation_plans.md).
    """

    name: str
    codec: str
    summary: str
    rotate: bool
    error_feedback: bool
    hessian_gain: bool
    default_dim: int | None
    default_group_size: int
    group_option: str = "group_size"
    max_vector_bits: int | None = None
    static_groups: bool = False
    act_order: bool = False
    fused_from_bits: float | None = None

    @property
    def options(self):
        """The codec's user options (empty while the codec is not registered)."""
        spec = CODECS.get(self.codec)
        return () if spec is None else spec.options


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


register_method(MethodSpec(
    "pvq", "pvq", "randomized Hadamard + PVQ shapes and Beta-law gains + block-LDLQ + Hessian-optimal gains",
    rotate=True, error_feedback=True, hessian_gain=True, default_dim=32, default_group_size=16,
    fused_from_bits=FUSED_DEFAULT_MIN_BITS,  # pvq: -1.2% / +0.2% at 3 / 4 bits, +4.8% at 2 (H200)
))
register_method(MethodSpec(
    "gptq", "uniform", "GPTQ: uniform scalar grid per group of 128 weights with error feedback",
    rotate=False, error_feedback=True, hessian_gain=False, default_dim=1, default_group_size=128,
    group_option="group_weights",
    static_groups=True,  # group scale/zero from the original weights: 16.568 -> 15.971 at 2 bits (gptq_peer.py)
))
register_method(MethodSpec(
    "rtn", "uniform", "round to nearest on a uniform grid per group of 128 weights",
    rotate=False, error_feedback=False, hessian_gain=False, default_dim=1, default_group_size=128,
    group_option="group_weights",
))
register_method(MethodSpec(
    "codebook", "kmeans",
    "LLM-Codebook: one Hessian-weighted K-means codebook per layer (stored, counted) + block-LDLQ assignment",
    rotate=False, error_feedback=True, hessian_gain=False, default_dim=4, default_group_size=32,
    group_option="group_weights", max_vector_bits=8,  # 2 bits: D=4 (256 centroids); 3, 4 bits: D=2
))
register_method(MethodSpec(
    "gptvq", "gptvq",
    "GPTVQ: Hessian-weighted EM codebook (8-bit, stored) + GPTQ-style LDLQ assignment + codebook update",
    rotate=False, error_feedback=True, hessian_gain=False, default_dim=4, default_group_size=32,
    group_option="group_weights", max_vector_bits=8,  # 2 bits: D=4 (256 centroids); 3, 4 bits: D=2
))
register_method(MethodSpec(
    "aqlm", "aqlm",
    "AQLM: M additive codebooks of 2^B vectors of 8 (2x8 at 2 bits), beam search on the Hessian block, "
    "codebooks updated on the output error, alternating",
    rotate=False, error_feedback=True, hessian_gain=True, default_dim=8, default_group_size=16,
    group_option="group_weights",
))
register_method(MethodSpec(
    "vptq", "vptq",
    "VPTQ: large Hessian-weighted K-means codebook of D=6 vectors + residual codebook + LDLQ assignment",
    rotate=False, error_feedback=True, hessian_gain=False, default_dim=6, default_group_size=16,
    group_option="group_weights", max_vector_bits=12,  # 2 bits: D=6 (2^9 + 2^3 centroids); 3, 4 bits: D=3
))
register_method(MethodSpec(
    "e8", "e8", "randomized Hadamard + E8 lattice codebook + block-LDLQ (QuIP#-style)",
    rotate=True, error_feedback=True, hessian_gain=False, default_dim=8, default_group_size=32,
))
register_method(MethodSpec(
    "lattice", "lattice",
    "randomized Hadamard + nested-lattice (Voronoi) code of E8/D_n/A_n*/Z^n at any rate + block-LDLQ",
    rotate=True, error_feedback=True, hessian_gain=False, default_dim=8, default_group_size=32,
))
register_method(MethodSpec(
    "ecsq", "ecsq",
    "entropy-coded uniform scalar quantizer (ANS, coded rate met per layer) + entropy-constrained rounding + GPTQ",
    rotate=False, error_feedback=True, hessian_gain=False, default_dim=1, default_group_size=256,
    group_option="group_weights",
))
register_method(MethodSpec(
    "trellis", "trellis",
    "randomized Hadamard + QTIP-style bitshift trellis (tail-biting Viterbi) + block-LDLQ",
    rotate=True, error_feedback=True, hessian_gain=False, default_dim=256, default_group_size=1,
))


# ---------------------------------------------------------------- config


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _help(text: str, flag: str | None = None) -> dict:
    """Field metadata: CLI help (and flag name when it is not the field's)."""
    return {"help": text} if flag is None else {"help": text, "flag": flag}


# version-1 checkpoints stored the codec options as flat fields of the config
_LEGACY_OPTIONS = {
    "gain_quantizer": ("gain_quantizer", "lloydmax"),
    "gain_target": ("gain_target", "projection"),
    "search": ("search", "greedy"),
    "gain_bits": ("gain_bits", None),
    "symmetric": ("symmetric", False),
    "codebook_weighting": ("weighting", "hessian"),
}


@dataclass(frozen=True)
class QuantizeConfig:
    """Everything that decides a quantization run (JSON round trip: to_dict / from_dict).

    Each field's metadata holds its CLI help; ``options`` holds the method's
    codec options by name (see ``pvq.codecs.CODECS[codec].options``).
    """

    method: str = field(default="pvq", metadata=_help("quantization method (see `pvq quantize --help`)"))
    bits: float = field(default=3.0, metadata=_help("target bits per weight, scales included"))
    dim: int | None = field(default=None, metadata=_help("vector dimension D (default: the method's)"))
    group_size: int | None = field(default=None, metadata=_help("vectors per stored scale (default: the method's)"))
    damp: float = field(default=0.01, metadata=_help("Hessian damping, relative to its mean diagonal"))
    seed: int = field(default=0, metadata=_help("seed of the rotations and of any fit"))
    n_samples: int = field(default=64, metadata=_help("calibration windows", flag="samples"))
    seq_len: int = field(default=256, metadata=_help("tokens per calibration window"))
    rotate: bool | None = field(default=None, metadata=_help(
        "randomized Hadamard coherence processing (--no-rotate is --rotation none)"))
    rotation: str | None = field(default=None, metadata={**_help(
        "rotation plan: fused (QuaRot-style: norms folded, the residual stream and heads rotated in the "
        "weights, one online Hadamard per block, on down_proj's input), layer (each linear its own U W V^T: "
        "two online rotations per linear) or none (default: pvq fused from 3 bits per weight and layer "
        "below, the other rotating methods layer, fused falling back to layer for families it cannot fold; "
        "none for methods that do not rotate)"), "choices": ROTATION_PLANS})
    rotation_block: int | None = field(default=None, metadata=_help(
        "fused plan: its online rotations (down_proj's input; with --act-bits o_proj's too) act on consecutive "
        "chunks of this many inputs, "
        "the same randomized Hadamard of that order on each (block-diagonal; it must divide those inputs: "
        "11008 = 43 x 256 then needs no dense factor online); default: 256 where it divides an input that is "
        "not a power of two (11008, 14336, 28672: faster on the GPU, quality-neutral as measured), else the "
        "whole input; 0: always one rotation of the whole input"))
    error_feedback: bool | None = field(default=None, metadata=_help("GPTQ/LDLQ error feedback over column blocks"))
    hessian_gain: bool | None = field(default=None, metadata=_help("Hessian-optimal gains (codecs that have them)"))
    static_groups: bool | None = field(default=None, metadata=_help(
        "group scales and zero points from the original weights before the column sweep (default: the method's)"))
    act_order: bool | None = field(default=None, metadata=_help(
        "sweep columns by decreasing Hessian diagonal (GPTQ desc_act), static groups (default: the method's)"))
    sequential: bool = field(default=True, metadata=_help(
        "quantize a block's linears stage by stage (q/k/v, o, gate/up, down)"))
    lora_steps: int = field(default=0, metadata=_help(
        "LoRA recovery steps on the not yet compressed layers after each chunk of blocks"))
    finetune_steps: int = field(default=0, metadata=_help(
        "after each block: Adam steps tuning its codebooks and fp16 scales (codes fixed) towards the block's "
        "unquantized outputs on the calibration inputs (AQLM's fine-tuning; codebook methods: aqlm, gptvq)"))
    finetune_lr: float = field(default=1e-3, metadata=_help(
        "--finetune-steps: Adam's learning rate, relative to each tuned tensor's RMS"))
    act_bits: float | None = field(default=None, metadata=_help(
        "quantize every quantized linear's input online at about this many bits per activation, gains and "
        "scales counted (default: activations not quantized)"))
    act_method: str = field(default="pvq", metadata=_help(
        "activation quantizer: pvq (vectors of D onto the pyramid P(D,K) per token) or rtn (per-token "
        "symmetric round to nearest)"))
    act_dim: int | None = field(default=None, metadata=_help(
        "pvq activations: vector size D (default: the weights' D, so the product runs on integer points)"))
    act_rotate: bool | None = field(default=None, metadata=_help(
        "quantize activations after the weights' randomized Hadamard (default: when the weights are rotated)"))
    act_clip: float = field(default=1.0, metadata=_help("rtn activations: clipping ratio of the per-token max"))
    act_gain_bits: int | None = field(default=None, metadata=_help(
        "pvq activations: gain bits per vector, 0 for fp16 gains (default: the best split for the rate)"))
    entropy_code: bool = field(default=False, metadata=_help(
        "save every layer's stored streams entropy coded (ANS with a static per-layer model, zstd as the floor; "
        "decoded at load)"))
    quantize_head: bool = field(default=False, metadata=_help(
        "also quantize the LM head with the method's codec at --bits, under the Hessian of its input (the final "
        "norm's output after the quantized blocks); a head tied to the input embedding also needs "
        "--quantize-embedding (the two are untied and quantized apart)"))
    quantize_embedding: bool = field(default=False, metadata=_help(
        "also quantize the input embedding table with the method's codec at --bits (before the blocks, so they "
        "are calibrated on its output; decoded once at load: the checkpoint shrinks, a loaded model's memory "
        "does not); a tied head also needs --quantize-head"))
    options: dict = field(default_factory=dict, metadata=_help("the codec's options"))

    def __post_init__(self):
        spec = get_method(self.method)
        if isinstance(self.bits, bool) or not isinstance(self.bits, (int, float)) or not (
            math.isfinite(self.bits) and self.bits > 0
        ):
            raise QuantizeError(f"bits (per weight) must be a positive number, got {self.bits!r}")
        if self.bits >= 16:
            raise QuantizeError(
                f"bits={self.bits} is not compression: the fp16 original takes 16 bits per weight; "
                "choose a rate below 16 (e.g. 2, 3 or 4)"
            )
        object.__setattr__(self, "bits", float(self.bits))
        for name in ("dim", "group_size"):
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
        for name in ("rotate", "error_feedback", "hessian_gain", "static_groups", "act_order"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, bool):
                raise QuantizeError(f"{name} must be True, False or None, got {v!r}")
        if self.rotation is not None and self.rotation not in ROTATION_PLANS:
            raise QuantizeError(f"rotation must be one of {', '.join(ROTATION_PLANS)} (or None), got {self.rotation!r}")
        if self.rotate is not None and self.rotation is not None and self.rotate != (self.rotation != "none"):
            raise QuantizeError(
                f"rotate={self.rotate} contradicts rotation={self.rotation!r}: --no-rotate means --rotation none; "
                "give one of the two"
            )
        if self.rotation_block is not None:
            if not _is_int(self.rotation_block) or self.rotation_block == 1 or self.rotation_block < 0:
                raise QuantizeError(f"rotation_block must be an integer >= 2 (inputs a chunk), 0 (the whole input) "
                                    f"or None (the default), got {self.rotation_block!r}")
            if self.rotation_block and self.rotation_plan != "fused":
                raise QuantizeError(
                    f"rotation_block sets the chunks of the fused plan's online rotations, and this run's plan is "
                    f"{self.rotation_plan!r}: add --rotation fused or drop --rotation-block")
        if self.act_order and not self.use_error_feedback:
            raise QuantizeError(
                "act_order orders the error feedback's column sweep; with error_feedback off it changes nothing: "
                "drop act_order or turn error_feedback on"
            )
        if not isinstance(self.sequential, bool):
            raise QuantizeError(f"sequential must be True or False, got {self.sequential!r}")
        if not isinstance(self.entropy_code, bool):
            raise QuantizeError(f"entropy_code must be True or False, got {self.entropy_code!r}")
        if not _is_int(self.lora_steps) or self.lora_steps < 0:
            raise QuantizeError(f"lora_steps must be an integer >= 0, got {self.lora_steps!r}")
        if not _is_int(self.finetune_steps) or self.finetune_steps < 0:
            raise QuantizeError(f"finetune_steps must be an integer >= 0, got {self.finetune_steps!r}")
        if isinstance(self.finetune_lr, bool) or not isinstance(self.finetune_lr, (int, float)) or not (
            math.isfinite(self.finetune_lr) and self.finetune_lr > 0
        ):
            raise QuantizeError(f"finetune_lr must be a finite number > 0, got {self.finetune_lr!r}")
        object.__setattr__(self, "finetune_lr", float(self.finetune_lr))
        if not isinstance(self.quantize_head, bool):
            raise QuantizeError(f"quantize_head must be True or False, got {self.quantize_head!r}")
        if not isinstance(self.quantize_embedding, bool):
            raise QuantizeError(f"quantize_embedding must be True or False, got {self.quantize_embedding!r}")
        if self.quantize_head and self.act_bits is not None:
            raise QuantizeError("quantize_head with act_bits: the LM head's input would not be quantized like the "
                                "blocks' linears'; drop one of --quantize-head and --act-bits")
        if self.finetune_steps and self.act_bits is not None:
            raise QuantizeError("finetune_steps tunes the weights on unquantized activations and act_bits quantizes "
                                "them: drop one of --finetune-steps and --act-bits")
        if spec.codec not in CODECS:
            raise QuantizeError(
                f"method {self.method!r} needs codec {spec.codec!r}, which is not registered in this "
                f"install (registered: {', '.join(sorted(CODECS))})"
            )
        object.__setattr__(self, "options", self._checked_options(spec))
        cspec = CODECS[spec.codec]
        if self.dim is not None and cspec.dims is not None and self.dim not in cspec.dims:
            raise QuantizeError(f"method {self.method!r} (codec {spec.codec!r}) works on dim in {cspec.dims}, got {self.dim}")
        if self.dim is not None and self.group_size is not None:
            self.make_codec(self.dim, self.group_size)  # a rate no setting reaches fails here
        if self.act_bits is None:
            if self.act_dim is not None or self.act_gain_bits is not None:
                raise QuantizeError("act_dim and act_gain_bits set activation quantization up: give act_bits too")
        else:
            if self.act_rotate and not self.use_rotation:
                raise QuantizeError(
                    f"act_rotate quantizes activations after the weights' randomized Hadamard, and method "
                    f"{self.method!r} does not rotate here: add rotate=True (--rotate) or drop act_rotate"
                )
            self.activation_quant()  # validates the activation settings

    def _checked_options(self, spec: MethodSpec) -> dict:
        if not isinstance(self.options, dict):
            raise QuantizeError(f"options must be a dict of codec options, got {type(self.options).__name__}")
        cspec = CODECS[spec.codec]
        out = {}
        for name, value in self.options.items():
            if cspec.option(name) is None:
                takers = [m for m, s in METHODS.items() if any(o.name == name for o in s.options)]
                raise QuantizeError(
                    f"option {name}={value!r} does not apply to method {self.method!r} (codec {spec.codec!r}); "
                    + (f"it applies to: {', '.join(takers)}" if takers else "no method takes it")
                )
            try:
                out[name] = cspec.option(name).check(value)
            except CodecError as e:
                raise QuantizeError(f"method {self.method!r}: {e}") from e
        return out

    # -- effective switches
    @property
    def spec(self) -> MethodSpec:
        return METHODS[self.method]

    @property
    def rotation_plan(self) -> str:
        """The run's rotation plan (:data:`~pvq.models.rotation_plan.ROTATION_PLANS`): ``rotation``
        when given, else from ``rotate`` (or the method's default): ``none``, or for methods that
        rotate :func:`~pvq.models.rotation_plan.default_rotation_plan` of the rate and the method's
        ``fused_from_bits`` (pvq: ``fused`` from 3 bits per weight, ``layer`` below; the other
        rotating methods: ``layer``)."""
        if self.rotation is not None:
            return self.rotation
        rotate = self.spec.rotate if self.rotate is None else self.rotate
        return default_rotation_plan(self.bits, self.spec.fused_from_bits) if rotate else "none"

    @property
    def use_rotation(self) -> bool:
        return self.rotation_plan != "none"

    @property
    def use_error_feedback(self) -> bool:
        return self.spec.error_feedback if self.error_feedback is None else self.error_feedback

    @property
    def use_hessian_gain(self) -> bool:
        return self.spec.hessian_gain if self.hessian_gain is None else self.hessian_gain

    @property
    def use_static_groups(self) -> bool:
        return self.spec.static_groups if self.static_groups is None else self.static_groups

    @property
    def use_act_order(self) -> bool:
        return self.spec.act_order if self.act_order is None else self.act_order

    def activation_quant(self) -> ActivationQuant | None:
        """The activation setting of this run (None: activations not quantized)."""
        if self.act_bits is None:
            return None
        rotate = self.use_rotation if self.act_rotate is None else self.act_rotate
        return ActivationQuant(self.act_method, self.act_bits, self.act_dim, rotate, self.act_clip, self.act_gain_bits)

    def solver_config(self) -> SolverConfig:
        """The solver settings of this run."""
        return SolverConfig(self.use_error_feedback, self.use_hessian_gain, self.damp,
                            static_groups=self.use_static_groups, act_order=self.use_act_order)

    def option(self, name: str):
        """The effective value of a codec option (the codec's default when unset)."""
        if name in self.options:
            return self.options[name]
        opt = CODECS[self.spec.codec].option(name)
        if opt is None:
            raise QuantizeError(f"method {self.method!r} has no option {name!r}")
        return opt.default

    def default_dim(self) -> int:
        spec = self.spec
        d = spec.default_dim if spec.default_dim is not None else CODECS[spec.codec].default_dim
        if spec.max_vector_bits is not None:
            while d > 1 and self.bits * d > spec.max_vector_bits + 1e-9:
                d //= 2
        return d

    # -- codecs
    def codec_kwargs(self, dim: int, group_size: int) -> dict:
        """Keyword arguments for the codec factory (group size in the factory's own unit)."""
        spec = self.spec
        kwargs = dict(self.options)
        kwargs[spec.group_option] = group_size * dim if spec.group_option == "group_weights" else group_size
        return kwargs

    def make_codec(self, dim: int, group_size: int) -> VectorCodec:
        """The codec of a layer quantized with D = ``dim`` and G = ``group_size``."""
        try:
            codec = make_codec(self.spec.codec, self.bits, dim, **self.codec_kwargs(dim, group_size))
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
        d = asdict(self)
        d["options"] = dict(self.options)
        d["rotation"] = self.rotation_plan  # resolved: a later default never changes what a saved run did
        return d

    @classmethod
    def from_dict(cls, d: dict) -> QuantizeConfig:
        """From :meth:`to_dict` output, or from a version-1 checkpoint's flat form (codec
        options as top-level fields, left at their defaults when the method lacks them)."""
        d = dict(d)
        options = dict(d.pop("options", None) or {})
        for old, (new, default) in _LEGACY_OPTIONS.items():
            if old in d:
                value = d.pop(old)
                if value != default:
                    options[new] = value
        if "rotation" not in d:  # written before rotation plans (format <= 3): per-layer rotations
            rotate = d.get("rotate")
            rotate = METHODS[d.get("method", "pvq")].rotate if rotate is None and d.get("method", "pvq") in METHODS \
                else rotate
            d["rotation"] = "layer" if rotate else "none"
            d["rotate"] = None
        if "rotation_block" not in d:  # written before chunked rotations: one rotation of the whole input
            d["rotation_block"] = 0
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise QuantizeError(f"unknown quantize option(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d, options=options)

    def replace(self, **changes) -> QuantizeConfig:
        return replace(self, **changes)

    # -- model checks
    def plan(self, model: torch.nn.Module):
        """Check this config against the model and build every layer's codec: a
        :class:`~pvq.models.plan.QuantizePlan` (see :func:`pvq.models.plan.build_plan`)."""
        from .plan import build_plan

        return build_plan(self, model)

    def __str__(self) -> str:
        parts = [f"{self.method} {self.bits:g} bits"]
        if self.dim:
            parts.append(f"D={self.dim}")
        if self.group_size:
            parts.append(f"G={self.group_size}")
        return ", ".join(parts)
