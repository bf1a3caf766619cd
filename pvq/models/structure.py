"""Where a transformers causal LM keeps its decoder blocks and the weights inside them.

General rules, with per-family exceptions in one table (:data:`FAMILY_RULES`):

* blocks: the one ``nn.ModuleList`` whose length is ``config.num_hidden_layers``
  (``model.layers``, ``transformer.h``, ``gpt_neox.layers``,
  ``model.decoder.layers``, ...); a family whose model holds several such lists
  names its path in the table;
* linear layers: the modules of a kind in :data:`LINEAR_KINDS` inside a block:
  ``nn.Linear`` (weight ``[out, in]``) and transformers' ``Conv1D`` (GPT-2
  style, weight stored ``[in, out]``), minus the names a family keeps
  (``FamilyRule.keep``: routers and gates that are linears);
* expert stacks: 3-D float parameters of an experts module (their first
  dimension is the expert count); ``is_transposed`` (set by transformers'
  ``use_experts_implementation``) says whether a slice is ``[in, out]``;
* block weights: every float parameter of a block with two or more dimensions
  whose name does not end in ``bias`` (biases and norms are not weights); the
  rate counts all of them (:func:`block_weight_bits`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pvq.errors import QuantizeError

__all__ = [
    "FINAL_NORMS",
    "head_input_norm",
    "embedding_as_linear",
    "head_is_tied",
    "input_embedding",
    "untie_head",
    "FAMILY_RULES",
    "LINEAR_KINDS",
    "ExpertStack",
    "FamilyRule",
    "LinearKind",
    "block_linears",
    "decoder_blocks",
    "decoder_layers",
    "expert_stacks",
    "is_linear",
    "kept_weights",
    "linear_sizes",
    "linear_weight",
]


# ---------------------------------------------------------------- per-family rules


@dataclass(frozen=True)
class FamilyRule:
    """What the general rules get wrong for one ``config.model_type``.

    blocks: dotted path of the decoder block list (None: the general rule).
    keep: block-relative module names (suffixes) of linears kept in their
        original precision (routers and gates that are ``nn.Linear``).
    """

    blocks: str | None = None
    keep: tuple[str, ...] = ()


FAMILY_RULES: dict[str, FamilyRule] = {
    # the shared expert's scalar gate: a [1, hidden] nn.Linear that weighs the shared
    # expert's output, a router in all but name: kept like the routers
    "qwen2_moe": FamilyRule(keep=("mlp.shared_expert_gate",)),
}


def family_rule(model: nn.Module) -> FamilyRule:
    mtype = getattr(getattr(model, "config", None), "model_type", None)
    return FAMILY_RULES.get(mtype, FamilyRule())


# ---------------------------------------------------------------- linear kinds


@dataclass(frozen=True)
class LinearKind:
    """A module type that computes ``y = x W^T + b``; ``transposed``: stored as ``[in, out]``."""

    type: type
    transposed: bool


def _linear_kinds() -> tuple[LinearKind, ...]:
    kinds = [LinearKind(nn.Linear, False)]
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - every supported transformers has it
        Conv1D = None
    if Conv1D is not None:
        kinds.append(LinearKind(Conv1D, True))
    return tuple(kinds)


LINEAR_KINDS: tuple[LinearKind, ...] = _linear_kinds()


def _kind(m: nn.Module) -> LinearKind | None:
    for k in LINEAR_KINDS:
        if isinstance(m, k.type):
            return k
    return None


def is_linear(m: nn.Module) -> bool:
    """True for a plain (not yet quantized) linear of a kind in :data:`LINEAR_KINDS`."""
    return _kind(m) is not None


def linear_weight(m: nn.Module) -> torch.Tensor:
    """The weight of a linear as ``[out, in]`` (a view for ``Conv1D``)."""
    k = _kind(m)
    if k is None:
        raise QuantizeError(f"{type(m).__name__} is not a linear layer kind pvq knows")
    return m.weight.t() if k.transposed else m.weight


def linear_sizes(m: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a linear."""
    out, inp = linear_weight(m).shape
    return int(inp), int(out)


# ---------------------------------------------------------------- blocks


def _num_blocks(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "get_text_config", lambda: cfg)() if cfg is not None else None
    n = getattr(cfg, "num_hidden_layers", None)
    return n if isinstance(n, int) and n > 0 else None


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(dotted path, ModuleList)`` of the decoder blocks (see the module docstring)."""
    rule = family_rule(model)
    name = type(model).__name__
    if rule.blocks is not None:
        try:
            obj = model.get_submodule(rule.blocks)
        except AttributeError as e:
            raise QuantizeError(f"{name}: no decoder blocks at {rule.blocks} (FAMILY_RULES)") from e
        return rule.blocks, obj
    n = _num_blocks(model)
    if n is None:
        raise QuantizeError(f"{name} has no config.num_hidden_layers; cannot find its decoder blocks")
    found = [(p, m) for p, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if len(found) != 1:
        where = ", ".join(p for p, _ in found) or "none"
        raise QuantizeError(
            f"cannot find the decoder blocks of {name}: expected one ModuleList of config.num_hidden_layers={n} "
            f"blocks, found {where}; add the family's path to pvq.models.structure.FAMILY_RULES"
        )
    return found[0]


FINAL_NORMS = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "norm_f", "decoder.final_layer_norm")
"""Where a base model keeps the norm between its last block and the LM head (first found wins)."""


def head_input_norm(model: nn.Module) -> tuple[str, nn.Module, nn.Module]:
    """``(LM head's name, LM head, final norm)``: the head reads ``norm(last block's output)``.

    Raises :class:`QuantizeError` for a model without a linear output embedding, a family whose final
    norm is not among :data:`FINAL_NORMS`, or one with a projection between the norm and the head.
    """
    name = type(model).__name__
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not is_linear(head):
        raise QuantizeError(f"{name} has no linear LM head (get_output_embeddings) to quantize")
    head_name = next(n for n, m in model.named_modules() if m is head)
    base = getattr(model, "base_model", None) or model
    if getattr(base, "project_out", None) is not None or getattr(getattr(base, "decoder", None), "project_out", None) is not None:
        raise QuantizeError(f"{name} projects the hidden states before its LM head (project_out); quantizing "
                            "the head is not supported for it: leave the head unquantized")
    for n in FINAL_NORMS:
        try:
            return head_name, head, base.get_submodule(n)
        except AttributeError:
            continue
    raise QuantizeError(f"cannot find the final norm of {name} (looked for {', '.join(FINAL_NORMS)} on its base model); "
                        "leave the head unquantized or add the name to pvq.models.structure.FINAL_NORMS")


def input_embedding(model: nn.Module) -> tuple[str, nn.Embedding]:
    """``(name, module)`` of the model's input embedding, a plain ``nn.Embedding`` (what a quantized
    lookup replaces). Raises :class:`QuantizeError` for a model without one or with a subclass whose
    forward does more than look rows up (Gemma's scaled embedding)."""
    name = type(model).__name__
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is None:
        raise QuantizeError(f"{name} has no input embedding (get_input_embeddings) to quantize")
    if type(emb) is not nn.Embedding:
        raise QuantizeError(f"{name}'s input embedding is {type(emb).__name__}, not a plain nn.Embedding (its "
                            "forward may scale or project the rows): leave it unquantized")
    return next(n for n, m in model.named_modules() if m is emb), emb


def embedding_as_linear(emb: nn.Embedding) -> nn.Linear:
    """A bias-free ``nn.Linear`` (its own storage on the meta device) whose weight is ``emb``'s table itself,
    read as ``[out = num_embeddings, in = embedding_dim]``: what the solver quantizes in its place."""
    lin = nn.Linear(emb.embedding_dim, emb.num_embeddings, bias=False, device="meta")
    lin.weight = emb.weight
    return lin


def head_is_tied(model: nn.Module) -> bool:
    """Whether the LM head shares its weight with the input embedding (or the config says they are tied)."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    shared = (emb is not None and head is not None and getattr(emb, "weight", None) is not None
              and getattr(head, "weight", None) is emb.weight)
    return shared or bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))


def untie_head(model: nn.Module) -> None:
    """Give a tied LM head its own copy of the shared weight (same values) and mark the config untied, so
    the head and the input embedding can be rewritten (folded, quantized) apart and are saved apart."""
    head = model.get_output_embeddings()
    emb = model.get_input_embeddings()
    if head.weight is emb.weight:
        head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
    model.config.tie_word_embeddings = False
    text = getattr(model.config, "get_text_config", None)
    if callable(text) and text() is not model.config:
        text().tie_word_embeddings = False


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder blocks (:func:`decoder_blocks` without the path)."""
    return decoder_blocks(model)[1]


def block_linears(block: nn.Module, rule: FamilyRule | None = None) -> dict[str, nn.Module]:
    """Plain linears of a block by block-relative name, minus the family's kept ones."""
    keep = () if rule is None else rule.keep
    return {n: m for n, m in block.named_modules() if is_linear(m) and not any(n == k or n.endswith("." + k) for k in keep)}


# ---------------------------------------------------------------- experts


@dataclass(frozen=True)
class ExpertStack:
    """A 3-D expert weight ``[experts, a, b]`` of module ``owner`` (block-relative), attribute ``param``.

    transposed: a slice is ``[in, out]`` (``x @ W[e]``); else ``[out, in]`` (``F.linear(x, W[e])``).
    """

    owner: str
    param: str
    num_experts: int
    out_features: int
    in_features: int
    transposed: bool

    @property
    def name(self) -> str:
        return f"{self.owner}.{self.param}" if self.owner else self.param


def expert_stacks(block: nn.Module) -> list[ExpertStack]:
    """The 3-D float weight parameters of a block's experts modules, in registration order."""
    out = []
    for owner, mod in block.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            if p.dim() != 3 or not p.is_floating_point() or pname.endswith("bias"):
                continue
            transposed = bool(getattr(mod, "is_transposed", False))
            e, a, b = p.shape
            out_f, in_f = (b, a) if transposed else (a, b)
            out.append(ExpertStack(owner, pname, int(e), int(out_f), int(in_f), transposed))
    return out


# ---------------------------------------------------------------- accounting


def is_weight(name: str, t: torch.Tensor) -> bool:
    """A weight (counted in the rate): a float tensor of 2+ dimensions that is not a bias."""
    return t.is_floating_point() and t.dim() >= 2 and not name.rsplit(".", 1)[-1].endswith("bias")


def kept_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The block weights left in their original precision (full names), e.g. routers."""
    path, blocks = decoder_blocks(model)
    out = {}
    for i, block in enumerate(blocks):
        for n, p in block.named_parameters():
            if is_weight(n, p):
                out[f"{path}.{i}.{n}"] = p
    return out
