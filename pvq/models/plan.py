"""The plan of a quantization run: every layer's D, group size, codec and rotation seeds, checked
against the model before any work (:func:`build_plan`, called by ``QuantizeConfig.plan``).

D is chosen per input size: the config's ``dim`` (which must divide every layer) or the method's
default where it divides, else the largest allowed divisor below it (powers of two down to a quarter of it first), named in
the plan's notes. Rotation seeds come from the run's seed and each weight's full name
(:func:`rotation_seed`), so a plan is reproducible and a checkpoint's seeds can be checked.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import torch

from pvq.codecs import CODECS, VectorCodec
from pvq.errors import QuantizeError
from pvq.transforms import LayerRotation, has_hadamard

from .activations import activation_plan_notes
from .rotation_plan import FOLD_RULES, fused_unsupported_reason
from .structure import (ExpertStack, block_linears, decoder_blocks, expert_stacks, family_rule, head_input_norm, input_embedding,
                        linear_sizes)

__all__ = ["LayerPlan", "QuantizePlan", "build_plan", "embedding_plan", "head_plan", "pick_dims", "pick_group",
           "rotation_seed"]


def build_plan(config, model: torch.nn.Module) -> QuantizePlan:
    """Check this config against the model and build every layer's codec (fast).

    Raises :class:`QuantizeError` naming what to change: no decoder blocks,
    a D or G that does not divide a layer (listing the values that do), a
    rate that no codec setting reaches. Without ``dim``, D is chosen per
    layer: the method's default where it divides the layer's input size,
    else the largest allowed power-of-two divisor below it down to a quarter
    of it (else the largest divisor), named in the plan's notes.
    """
    path, layers = decoder_blocks(model)
    rule = family_rule(model)
    # (block, full name, out, in, experts or None)
    units: list[tuple[int, str, int, int, ExpertStack | None]] = []
    for i, block in enumerate(layers):
        for name, mod in block_linears(block, rule).items():
            inp, out = linear_sizes(mod)
            units.append((i, f"{path}.{i}.{name}", out, inp, None))
        for st in expert_stacks(block):
            units.append((i, f"{path}.{i}.{st.name}", st.out_features, st.in_features, st))
    if not units:
        raise QuantizeError("the model's decoder blocks hold no linear layers or expert weights to quantize")
    in_sizes = sorted({u[3] for u in units})
    dims = pick_dims(config, in_sizes)
    rotation, rotation_notes = _rotation_plan(config, model)
    plans: list[LayerPlan] = []
    codecs: dict[tuple[int, int], VectorCodec] = {}
    for block, name, out, inp, stack in units:
        dim = dims[inp]
        g = pick_group(config, inp, dim, name)
        if (dim, g) not in codecs:
            codecs[(dim, g)] = config.make_codec(dim, g)
        count = 1 if stack is None else stack.num_experts
        rots = [_layer_rotation(rotation, model, config.seed, name, out, inp, _unit(name, stack, e),
                                config.act_bits is not None, config.rotation_block) for e in range(count)]
        plans.append(LayerPlan(block, name, out, inp, dim, g, codecs[(dim, g)], rots[0], stack,
                               rots if stack is not None else None))
    out = QuantizePlan(config, plans, len(layers), path=path, rotation=rotation)
    out.notes.extend(rotation_notes)
    act = config.activation_quant()
    if act is not None:
        out.notes.extend(activation_plan_notes(act, plans))
    return out


def head_plan(config, plan: QuantizePlan, model: torch.nn.Module) -> LayerPlan:
    """The :class:`LayerPlan` of the model's LM head (``config.quantize_head``): D and G as a block linear
    with as many inputs would get them, the codec at ``config.bits`` (or the allocation's), block index after
    the last block, and
    under the ``layer`` plan a rotation of its input side only (an output side would mix the vocabulary's
    rows, and a vocabulary of prime size would need a dense one; ``fused``: none, its input is the rotated
    stream)."""
    name, head, _ = head_input_norm(model)
    inp, out = linear_sizes(head)
    dim = pick_dims(config, [inp])[inp]
    g = pick_group(config, inp, dim, name)
    rot = LayerRotation(out, inp, None, rotation_seed(config.seed, name, "in")) if plan.rotation == "layer" else None
    codec = plan.table_codecs.get(name) or config.make_codec(dim, g)
    return LayerPlan(plan.num_blocks, name, out, inp, dim, g, codec, rot)


def embedding_plan(config, plan: QuantizePlan, model: torch.nn.Module) -> LayerPlan:
    """The :class:`LayerPlan` of the model's input embedding (``config.quantize_embedding``): its table
    ``[vocab, hidden]`` as a layer's weight (vectors of D along the hidden size), D and G as a block linear
    with as many inputs would get them, the codec at ``config.bits`` (or the allocation's), block index -1,
    and under either plan a rotation of its own input side (undone when the table is decoded, so a lookup
    costs nothing more; under ``fused`` an untied table is already in the rotated stream's coordinates, a
    second rotation spreads its rows' outliers again)."""
    name, emb = input_embedding(model)
    inp, out = emb.embedding_dim, emb.num_embeddings
    dim = pick_dims(config, [inp])[inp]
    g = pick_group(config, inp, dim, name)
    rot = LayerRotation(out, inp, None, rotation_seed(config.seed, name, "in"))
    codec = plan.table_codecs.get(name) or config.make_codec(dim, g)
    return LayerPlan(-1, name, out, inp, dim, g, codec, rot)


def _rotation_plan(config, model: torch.nn.Module) -> tuple[str, list[str]]:
    """The run's effective rotation plan and its note: ``fused`` falls back to ``layer`` for the
    whole model where it cannot fold the family (never a mix)."""
    plan = config.rotation_plan
    if plan == "fused":
        reason = fused_unsupported_reason(model)
        if reason is not None:
            if config.rotation_block:
                raise QuantizeError(f"rotation_block chunks the fused plan's online rotations, and the fused plan "
                                    f"cannot fold this model ({reason}): drop --rotation-block")
            return "layer", [f"rotation plan: layer for the whole model (fused cannot fold it: {reason})"]
        rule = FOLD_RULES[model.config.model_type]
        online = (rule.online_input, *(rule.act_online_inputs if config.act_bits is not None else ()))
        if config.rotation_block is None:
            chunks = f", in chunks of {AUTO_ROTATION_BLOCK} inputs where that divides a non-power-of-two input"
        elif config.rotation_block:
            chunks = f", in chunks of {config.rotation_block} inputs"
        else:
            chunks = ""
        return plan, [f"rotation plan: fused (norms folded, residual stream and heads rotated in the weights; "
                      f"online rotations per block on the inputs of {', '.join(online)}{chunks})"]
    return plan, []


AUTO_ROTATION_BLOCK = 256
"""The fused plan's default chunk for an online rotation whose input is not a power of two and which it divides
(11008 = 43 x 256: no dense Hadamard factor online; on the H200 the 7B step went 196 -> 214 tokens/s with q/k/v and
gate/up merged, and perplexity moved +0.09% +- 0.23 at 3 bits: docs/kernels.md, session 18)."""


def online_rotation_block(inp: int, block: int | None) -> int | None:
    """The chunk of an online rotation of ``inp`` inputs (None: the whole input) for ``rotation_block`` ``block``:
    None (default) -> :data:`AUTO_ROTATION_BLOCK` where it divides ``inp`` and ``inp`` is not a power of two; 0 -> the
    whole input; else ``block``."""
    if block is None:
        return AUTO_ROTATION_BLOCK if inp % AUTO_ROTATION_BLOCK == 0 and inp & (inp - 1) else None
    return block or None


def _layer_rotation(plan: str, model, seed: int, name: str, out: int, inp: int, unit: str,
                    act: bool, block: int | None = None) -> LayerRotation | None:
    """A layer's own rotation under ``plan``: both sides (``layer``), none (``none``; ``fused`` layers
    whose input the stream rotation covers), or the input side alone (``fused``: down_proj, and
    o_proj when activations are quantized; block-diagonal in chunks of ``block`` inputs where given)."""
    if plan == "none":
        return None
    if plan == "layer":
        return LayerRotation(out, inp, rotation_seed(seed, unit, "out"), rotation_seed(seed, unit, "in"))
    rule = FOLD_RULES[model.config.model_type]
    online = (rule.online_input, *(rule.act_online_inputs if act else ()))
    if any(name.endswith("." + n) for n in online):
        block = online_rotation_block(inp, block)
        if block is not None and inp % block:
            fits = [b for b in range(2, inp + 1) if inp % b == 0 and has_hadamard(b)]
            raise QuantizeError(f"rotation_block {block} does not divide the {inp} inputs of {name}; chunk sizes "
                                f"that divide it and have a Hadamard matrix: {', '.join(map(str, fits))}")
        return LayerRotation(out, inp, None, rotation_seed(seed, unit, "in"), block)
    return None


def pick_dims(config, in_sizes: list[int]) -> dict[int, int]:
    """D per input size: ``config.dim`` (which must divide every size) or the method's default
    where it divides, else the largest allowed power of two below it and at least a quarter of it,
    else the largest allowed divisor below it."""
    cspec = CODECS[config.spec.codec]

    def allowed(n: int) -> list[int]:
        return [d for d in range(1, n + 1) if n % d == 0 and (cspec.dims is None or d in cspec.dims)]

    if config.dim is not None:
        bad = [n for n in in_sizes if n % config.dim]
        if bad:
            common = [d for d in allowed(math.gcd(*in_sizes))]
            raise QuantizeError(
                f"dim D={config.dim} does not divide the input sizes {bad} of some linear layers; "
                f"dims that divide every layer: {common or 'none'}; or leave dim unset to pick D per layer"
            )
        return {n: config.dim for n in in_sizes}
    want = config.default_dim()
    out = {}
    for n in in_sizes:
        fit = sorted((d for d in allowed(n) if d <= want), reverse=True)
        # the method's own D first where it divides (VPTQ's 6), then powers of two down to a quarter of it
        # (the kernels' tuned sizes: PVQ's 8 for 1032 inputs), then the largest divisor (a trellis tile of
        # 172 for 1032 inputs, not 8)
        pow2 = [d for d in fit if d & (d - 1) == 0 and d != want and 4 * d >= want]
        fit = [d for d in fit if d == want] + pow2 + [d for d in fit if d not in pow2 and d != want]
        if not fit:
            raise QuantizeError(
                f"codec {config.spec.codec!r} needs D in {cspec.dims}, and none divides the input size {n} "
                "of some layers; this method cannot quantize this model"
            )
        errors = []
        for d in fit:  # the largest D whose codec can be built at this size (e.g. PVQ needs G >= 2)
            try:
                if config.group_size is None:
                    config.make_codec(d, pick_group(config, n, d, f"in={n}"))
                out[n] = d
                break
            except QuantizeError as e:
                errors.append(str(e))
        if n not in out:
            raise QuantizeError(f"no vector dimension works for layers with {n} inputs: {errors[0]}")
    return out

def pick_group(config, in_features: int, dim: int, name: str) -> int:
    vectors = in_features // dim
    divisors = [g for g in range(1, vectors + 1) if vectors % g == 0]
    if config.group_size is not None:
        if vectors % config.group_size:
            raise QuantizeError(
                f"group_size G={config.group_size} (vectors of D={dim}, {config.group_size * dim} columns) "
                f"does not divide {name} (in_features={in_features}, {vectors} vectors per row); "
                f"group sizes that divide it: {divisors}; or leave group_size unset to pick one per layer"
            )
        return config.group_size
    want = config.spec.default_group_size
    # nearest divisor in log scale (ties: the larger one, fewer scales)
    return min(divisors, key=lambda g: (abs(math.log(g / want)), -g))


def rotation_seed(seed: int, name: str, side: str) -> int:
    """Deterministic 31-bit rotation seed of one side of one layer."""
    return zlib.crc32(f"{seed}:{name}:{side}".encode()) & 0x7FFFFFFF


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
    rotation: LayerRotation | None
    experts: ExpertStack | None = None  # an expert stack: one weight [out, in] per expert
    expert_rotations: list[LayerRotation | None] | None = None  # one per expert (rotation is the first)

    @property
    def count(self) -> int:
        """Weights [out, in] this plan quantizes (experts of a stack, else 1)."""
        return 1 if self.experts is None else self.experts.num_experts


@dataclass
class QuantizePlan:
    """The checked plan of a run: the config and one :class:`LayerPlan` per linear layer."""

    config: object  # the run's pvq.models.methods.QuantizeConfig (not imported: methods imports this module)
    layers: list[LayerPlan]
    num_blocks: int
    notes: list[str] = field(default_factory=list)
    path: str = "model.layers"  # dotted path of the decoder block list
    rotation: str = "layer"  # the effective rotation plan (fused falls back to layer where it cannot fold)
    base_bits: float | None = None  # the rate its codecs were built at when not config.bits (allocation's base plan)
    # codecs the allocation chose for the input embedding / LM head by module name (else config.bits)
    table_codecs: dict[str, VectorCodec] = field(default_factory=dict)

    def __post_init__(self):
        groups = {(p.dim, p.group_size) for p in self.layers}
        if self.config.dim is None and len({d for d, _ in groups}) > 1:
            self.notes.append(
                "vector dimension per layer (the method's D does not divide every input size): "
                + ", ".join(f"in={p.in_features}: D={p.dim}" for p in _unique_by_in(self.layers))
            )
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


def _unit(name: str, stack, expert: int) -> str:
    """The name that seeds a weight's rotations (``name`` or ``name.<expert>`` in a stack)."""
    return name if stack is None else f"{name}.{expert}"
