"""Linears that read one input run as one product: q/k/v and gate/up, merged at run time.

In a decoder block q_proj, k_proj and v_proj read the same normalized hidden state, and so do
gate_proj and up_proj. Run as three (two) products, each pays a kernel's fixed cost (launch, its
tables staged, the last wave's idle SMs); stacked into one ``[sum(out), in]`` weight they pay it
once, and a small layer's few row groups fill more of the GPU. :func:`merge_shared_input_linears`
stacks them where that changes nothing but the speed:

* plain ``nn.Linear`` layers: weights (and biases) concatenated;
* :class:`~pvq.models.qlinear.QuantizedLinear` layers of one codec configuration with the same input
  rotation (or none: the ``fused`` plan folds q/k/v's and gate/up's), no output rotation, no
  activation quantization and the same fitted data: their codes are unpacked, concatenated and
  stored again by the codec (:meth:`~pvq.codecs.VectorCodec.store`), so every backend runs the
  merged layer without knowing it was merged, and its decoded weight is the members' stacked,
  bit for bit.

Each merged linear is replaced by a :class:`SharedInputSlice` that returns its columns of the
group's output: the first one called computes the product for all (a view each); the others take
theirs as long as they are called on the same tensor (by identity), once each. This is a run-time
form for decoding speed: a merged model cannot be saved (:func:`pvq.models.save_quantized` refuses
it); save before merging.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import types

import torch
from torch import nn

from pvq.codecs import SCALE_KEY
from pvq.codecs.coded import EntropyCodedCodec
from pvq.errors import QuantizeError

from .backends import GATED_ACTIVATIONS
from .qlinear import QuantizedLinear, buffer_name
from .rotation_plan import FOLD_RULES
from .structure import decoder_blocks

__all__ = ["MergeReport", "SharedInputLinears", "SharedInputSlice", "has_merged_linears", "merge_linears",
           "fuse_for_decoding", "merge_shared_input_linears", "merged_products", "route_gated_mlps"]


class SharedInputLinears(nn.Module):
    """The merged product of linears that read one input: ``merged`` (``[sum(out_sizes), in]``) and how
    its output splits (``out_sizes``, in the members' order, named ``names``)."""

    def __init__(self, merged: nn.Module, out_sizes: list[int], names: list[str]):
        super().__init__()
        self.merged = merged
        self.out_sizes = tuple(int(n) for n in out_sizes)
        self.names = tuple(names)
        # (input, outputs, members that took theirs): kept until every member took its output
        self._pending: tuple[torch.Tensor, tuple[torch.Tensor, ...], set[int]] | None = None

    def output(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Member ``index``'s output ``[..., out_sizes[index]]`` for input ``x [..., in]`` (a view of the
        merged output; computed once per input tensor for all members)."""
        pending = self._pending
        if pending is None or pending[0] is not x or index in pending[2]:
            pending = self._pending = (x, torch.split(self.merged(x), self.out_sizes, dim=-1), set())
        pending[2].add(index)
        out = pending[1][index]
        if len(pending[2]) == len(self.out_sizes):
            self._pending = None
        return out

    def extra_repr(self) -> str:
        return f"names={list(self.names)}, out_sizes={list(self.out_sizes)}"


class SharedInputSlice(nn.Module):
    """Stands where one merged linear stood; its forward is that linear's output. The first member of
    a group holds the group as a submodule (moved, listed and counted once); the others refer to it."""

    def __init__(self, group: SharedInputLinears, index: int, in_features: int):
        super().__init__()
        self.index = int(index)
        self.in_features = int(in_features)
        self.out_features = group.out_sizes[self.index]
        if self.index == 0:
            self.group = group
        else:
            object.__setattr__(self, "_group", group)  # not a submodule: the first member owns it

    @property
    def shared(self) -> SharedInputLinears:
        return self.group if self.index == 0 else self._group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared.output(x, self.index)

    def extra_repr(self) -> str:
        return (f"{self.shared.names[self.index]}: in_features={self.in_features}, out_features={self.out_features} "
                f"(member {self.index} of {len(self.shared.out_sizes)})")


@dataclass
class MergeReport:
    """What :func:`merge_shared_input_linears` did: groups merged, linears they replaced, and why the
    other groups stayed as they were (``{block-relative names: reason}``, first block each)."""

    groups: int = 0
    linears: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    routed: bool = False  # a report of route_gated_mlps: groups are the MLPs routed (linears unused)

    def describe(self) -> str:
        if self.routed:
            return f"routed {self.groups} gated MLPs to their down_proj's backend" + "".join(
                f"; left the others: {why}" for why in self.skipped.values())
        text = f"merged {self.linears} linears into {self.groups} products"
        return text + "".join(f"; kept {names} apart: {why}" for names, why in self.skipped.items())


def _same(values) -> bool:
    values = list(values)
    return all(v == values[0] for v in values[1:])


def _quantized_refusal(members: list[QuantizedLinear]) -> str | None:
    """Why these quantized layers cannot run as one (None: they can)."""
    if any(type(m) is not QuantizedLinear for m in members):
        return "not all plain QuantizedLinear layers"
    if any(isinstance(m.codec, EntropyCodedCodec) for m in members):
        return "their codes are entropy-coded streams (loading decodes them; merge a loaded model)"
    checks = (
        (lambda m: m.in_features, "their input sizes differ"),
        (lambda m: m.codec_config, "their codecs differ"),
        (lambda m: m.layout, "their code layouts differ"),
        (lambda m: tuple(m.stored_keys), "their stored tensors differ"),
        (lambda m: m.bias is None, "some have a bias and some not"),
        (lambda m: m.backend_name, "they are set to different backends"),
        (lambda m: None if m.rotation is None else (m.rotation.in_seed, m.rotation.in_block),
         "their input rotations differ"),
    )
    for key, why in checks:
        if not _same(key(m) for m in members):
            return why
    if any(m.rotation is not None and m.rotation.out_seed is not None for m in members):
        return "they rotate their outputs (the layer plan); the fused plan's q/k/v and gate/up do not"
    if any(m.act_quant is not None for m in members):
        return "they quantize their inputs (activation quantization runs per layer)"
    data = [m.fitted_codec().data_tensors() for m in members]
    if not all(d.keys() == data[0].keys() and all(torch.equal(d[k], data[0][k]) for k in d) for d in data):
        return "their fitted codec data (codebooks) differ"
    if not _same(t.device for m in members for t in m.stored_tensors().values()):
        return "their tensors are on different devices"
    return None


@torch.no_grad()
def _merge_quantized(members: list[QuantizedLinear]) -> QuantizedLinear:
    """One QuantizedLinear whose weight is the members' stacked (codes unpacked, joined, stored again)."""
    first = members[0]
    codec = first.fitted_codec()
    codes = [m.codes() for m in members]
    joined = {k: torch.cat([c[k] for c in codes]) for k in codes[0]}
    scales = (torch.cat([m.stored_tensors()[SCALE_KEY].reshape(-1) for m in members])
              if SCALE_KEY in first.stored_keys else torch.empty(0))
    stored = codec.store(joined, scales)
    if list(stored) != list(first.stored_keys):
        raise QuantizeError(f"codec {codec.describe()} stored {sorted(stored)} for the merged codes, the layers "
                            f"{sorted(first.stored_keys)}; cannot merge them")
    out = sum(m.out_features for m in members)
    like = next(iter(first.stored_tensors().values()))
    merged = QuantizedLinear(
        first.in_features, out, first.codec_config, {k: (tuple(v.shape), v.dtype) for k, v in stored.items()},
        bias=first.bias is not None, rotation=None if first.rotation is None else first.rotation.seeds(),
        bias_dtype=torch.float32 if first.bias is None else first.bias.dtype, device=like.device,
        layout=first.layout)
    for k, v in stored.items():
        getattr(merged, buffer_name(k)).copy_(v)
    if first.bias is not None:
        merged.bias.copy_(torch.cat([m.bias for m in members]))
    merged.set_backend(first.backend_name)
    merged.stored_on_host = first.stored_on_host
    return merged


def _plain_refusal(members: list[nn.Linear]) -> str | None:
    if any(type(m) is not nn.Linear for m in members):
        return "not all plain nn.Linear layers"
    for key, why in ((lambda m: m.in_features, "their input sizes differ"),
                     (lambda m: (m.weight.dtype, m.weight.device), "their weights' dtypes or devices differ"),
                     (lambda m: m.bias is None, "some have a bias and some not")):
        if not _same(key(m) for m in members):
            return why
    return None


@torch.no_grad()
def _merge_plain(members: list[nn.Linear]) -> nn.Linear:
    first = members[0]
    w = torch.cat([m.weight for m in members])
    merged = nn.Linear(first.in_features, w.shape[0], bias=first.bias is not None, device=w.device, dtype=w.dtype)
    merged.weight.copy_(w)
    if first.bias is not None:
        merged.bias.copy_(torch.cat([m.bias for m in members]))
    merged.requires_grad_(first.weight.requires_grad)
    return merged


def merge_refusal(members: list[nn.Module]) -> str | None:
    """Why these linears cannot run as one product (None: they can)."""
    if len(members) < 2:
        return "fewer than two linears"
    if any(isinstance(m, SharedInputSlice) for m in members):
        return "already merged"
    if all(isinstance(m, QuantizedLinear) for m in members):
        return _quantized_refusal(members)
    if all(isinstance(m, nn.Linear) for m in members):
        return _plain_refusal(members)
    return "a mix of layer types (" + ", ".join(sorted({type(m).__name__ for m in members})) + ")"


def merge_linears(parent: nn.Module, names: list[str]) -> str | None:
    """Replace ``parent``'s linears ``names`` (block-relative, e.g. ``self_attn.q_proj``) by one merged
    product and a :class:`SharedInputSlice` each; returns why not (None: merged). The caller vouches that
    the linears read the same input."""
    try:
        members = [parent.get_submodule(n) for n in names]
    except AttributeError:
        return "not all of them are in the block"
    why = merge_refusal(members)
    if why is not None:
        return why
    merged = _merge_quantized(members) if isinstance(members[0], QuantizedLinear) else _merge_plain(members)
    group = SharedInputLinears(merged, [m.out_features for m in members], names)
    for i, name in enumerate(names):
        owner, _, attr = name.rpartition(".")
        setattr(parent.get_submodule(owner) if owner else parent, attr,
                SharedInputSlice(group, i, members[i].in_features))
    return None


def _fold_rule(model: nn.Module, why: str):
    """The :data:`~pvq.models.rotation_plan.FOLD_RULES` entry of ``model``'s family (where its blocks keep their
    readers and writers), or a QuantizeError that starts with ``why``."""
    mtype = getattr(getattr(model, "config", None), "model_type", None)
    if mtype not in FOLD_RULES:
        raise QuantizeError(f"{why}; model_type {mtype!r} is not one of {', '.join(sorted(FOLD_RULES))}")
    return FOLD_RULES[mtype]


def fuse_for_decoding(model: nn.Module) -> str:
    """Both run-time rewrites for decoding speed (``pvq generate --merge-projections``):
    :func:`merge_shared_input_linears`, then :func:`route_gated_mlps`; returns what they did, in words."""
    text = merge_shared_input_linears(model).describe()
    gated = route_gated_mlps(model)
    return text + ("; " + gated.describe() if gated.groups else "")


def merge_shared_input_linears(model: nn.Module) -> MergeReport:
    """Merge each decoder block's q/k/v and gate/up linears into one product each where they can run as
    one (module docstring); returns what was merged and why the rest was not. Families: those whose
    blocks the fused rotation plan knows (:data:`~pvq.models.rotation_plan.FOLD_RULES`)."""
    rule = _fold_rule(model, "merging q/k/v and gate/up needs to know which linears read one input")
    report = MergeReport()
    _, blocks = decoder_blocks(model)
    for block in blocks:
        for names in (list(rule.attn_readers), list(rule.mlp_readers)):
            if len(names) < 2:
                continue  # already one linear (phi3's qkv_proj, gate_up_proj)
            why = merge_linears(block, names)
            if why is None:
                report.groups += 1
                report.linears += len(names)
            else:
                report.skipped.setdefault("/".join(n.rpartition(".")[2] for n in names), why)
    return report


def merged_products(model: nn.Module) -> int:
    """How many merged products (:class:`SharedInputLinears`) ``model`` holds."""
    return sum(isinstance(m, SharedInputLinears) for m in model.modules())


def has_merged_linears(model: nn.Module) -> bool:
    """Whether ``model`` holds linears merged by :func:`merge_shared_input_linears`."""
    return merged_products(model) > 0


_ACTIVATION_NAMES = {"SiLU": "silu", "SiLUActivation": "silu"}
"""Class names of a gated MLP's ``act_fn`` -> the name :data:`~pvq.models.backends.GATED_ACTIVATIONS` knows."""


def _gated_forward(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A Llama-style MLP's forward, ``down(act(gate(x)) * up(x))``, with the gated product handed to down_proj
    (the plain form if down_proj was replaced since, e.g. by activation quantization)."""
    gate, up = mlp.gate_proj(x), mlp.up_proj(x)
    if type(mlp.down_proj) is QuantizedLinear:
        return mlp.down_proj.gated_forward(gate, up, mlp._pvq_gated_activation)
    return mlp.down_proj(mlp.act_fn(gate) * up)


def route_gated_mlps(model: nn.Module) -> MergeReport:
    """Hand each decoder block's gated activation ``act(gate) * up`` to its quantized down_proj
    (:meth:`~pvq.models.qlinear.QuantizedLinear.gated_forward`), whose backend may compute it in the kernel that
    rotates down_proj's input (the Triton backend, for power-of-two chunks: ``pvq quantize --rotation-block``);
    elsewhere the same operations as the model's own forward. The MLP modules keep their parameters and names
    (only their ``forward`` is replaced), so the model saves as before. Returns how many MLPs (``groups``) and
    why the others were left (families of :data:`~pvq.models.rotation_plan.FOLD_RULES`)."""
    rule = _fold_rule(model, "routing gated MLPs needs to know their layout")
    report = MergeReport(routed=True)
    _, blocks = decoder_blocks(model)
    for block in blocks:
        names = tuple(n.rpartition(".")[2] for n in rule.mlp_readers)
        owner = rule.mlp_writer.rpartition(".")[0]
        why = None
        mlp = block.get_submodule(owner) if owner else block
        activation = _ACTIVATION_NAMES.get(type(getattr(mlp, "act_fn", None)).__name__)
        if names != ("gate_proj", "up_proj") or not all(hasattr(mlp, a) for a in ("gate_proj", "up_proj", "down_proj")):
            why = f"its MLP is not gate_proj/up_proj/down_proj (readers {list(rule.mlp_readers)})"
        elif activation not in GATED_ACTIVATIONS:
            why = f"activation {type(getattr(mlp, 'act_fn', None)).__name__} is not one of {sorted(_ACTIVATION_NAMES)}"
        elif type(mlp.down_proj) is not QuantizedLinear:
            why = "down_proj is not a quantized layer"
        elif getattr(mlp, "_pvq_gated_activation", None) is not None:
            why = "already routed"
        if why is not None:
            report.skipped.setdefault("mlp", why)
            continue
        mlp._pvq_gated_activation = activation
        mlp.forward = types.MethodType(_gated_forward, mlp)
        report.groups += 1
    return report
