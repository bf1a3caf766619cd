"""Rotation plans: where a model's randomized Hadamards live.

* ``layer``: every quantized linear carries its own pair, ``W' = U W V^T``; at inference each
  linear rotates its input and un-rotates its output (two online rotations per linear, 14 per
  Llama block).
* ``none``: no rotation.
* ``fused`` (QuaRot / SpinQuant): the model is rewritten before quantization, exactly, so that
  most rotations cost nothing at inference:

  - each RMSNorm's scale is folded into the linears that read its output (``W <- W diag(g)``,
    the norm keeps unit scale);
  - the residual stream is rotated by one randomized Hadamard ``Q`` of the hidden size: the
    linears that read it (q/k/v, gate/up) take ``W <- W Q^T``, those that write it (o, down)
    ``W <- Q W`` (and ``b <- Q b``);
  - a randomized Hadamard ``H`` of the head size on each head's values: v_proj's output rows
    (per kv head) ``H W_v``, o_proj's input columns (per head) ``W_o H^T``: attention is linear
    in V per head, and every head of a GQA group uses the same ``H``;
  - the ends: with untied embeddings, ``E <- E Q`` and the final norm's scale folded into the
    LM head with ``W <- W diag(g) Q^T``; with tied embeddings (one tensor serves both ends)
    the stream is rotated online after the embedding and back before the final norm, two
    rotations per token for the whole model, so the tie and its memory stay
    (:func:`pvq.models.format.online_rotations_per_block` counts them);
  - down_proj's input (after the gated activation) cannot be folded: it keeps one online
    randomized Hadamard, a one-sided :class:`~pvq.transforms.LayerRotation` (input side only).

  One online rotation per block instead of fourteen; with quantized activations two: o_proj's
  input keeps one too (the per-head ``H`` mixes only within heads; QuaRot does the same). Families whose norms or blocks do not fit
  this (LayerNorm with mean subtraction or bias, post-norms, parallel blocks, expert stacks)
  fall back to ``layer`` for the whole model, with one line in the plan notes: never a mix.

Conventions: a row vector ``x`` is rotated as ``x' = T(x)`` (:meth:`RandomizedHadamard.forward`
along the last dim, ``x' = x M^T``); a linear ``y = x W^T`` reading ``x'`` needs ``W' = T(W)``
(rows transformed), one writing ``y' = T(y)`` needs ``W' = T(W^T)^T``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from pvq.errors import QuantizeError
from pvq.transforms import RandomizedHadamard

from .structure import decoder_blocks

__all__ = [
    "fold_block",
    "folded_ends",
    "FUSED_DEFAULT_MIN_BITS",
    "FOLD_RULES",
    "ROTATION_PLANS",
    "FoldRule",
    "StreamRotation",
    "default_rotation_plan",
    "fold_rotations",
    "fused_unsupported_reason",
    "install_stream_rotation",
    "model_rotation",
    "stream_rotations",
]

ROTATION_PLANS = ("fused", "layer", "none")
FUSED_DEFAULT_MIN_BITS = 3.0
"""pvq defaults to ``fused`` at this many bits per weight and more, to ``layer`` below
(:func:`default_rotation_plan`, ``MethodSpec.fused_from_bits``)."""


def default_rotation_plan(bits: float, fused_from_bits: float | None = FUSED_DEFAULT_MIN_BITS) -> str:
    """The plan of a method that rotates when a run names none: ``fused`` from ``fused_from_bits``
    up (the method's own threshold; None: never), ``layer`` below. Measured on the reference model
    (``benchmarks/rotation_plans.py``, docs/rotation_plans.md): pvq at 3 and 4 bits is -1.2% /
    +0.2% in perplexity under ``fused`` against ``layer`` with 1 online rotation per block instead
    of 14, +4.8% at 2 bits; e8 pays +2.5% at 3 bits, so it keeps ``layer``."""
    return "fused" if fused_from_bits is not None and bits >= fused_from_bits else "layer"


@dataclass(frozen=True)
class FoldRule:
    """Where a pre-norm RMSNorm family keeps what the fused plan folds (block-relative names).

    norm_offset: the norm multiplies by ``norm_offset + weight`` (Gemma: 1, others 0).
    value: the module whose last ``kv_heads * head_dim`` output rows are the values.
    online_input: the linear whose input keeps an online rotation (after the gated activation).
    act_online_inputs: linears that also keep an online input rotation when activations are
        quantized: o_proj, whose input the per-head ``H`` rotates only within heads (QuaRot rotates
        it online across heads too).
    final_norm: the final norm, relative to the base model (``model.model``).
    """

    attn_norm: str = "input_layernorm"
    mlp_norm: str = "post_attention_layernorm"
    attn_readers: tuple[str, ...] = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    mlp_readers: tuple[str, ...] = ("mlp.gate_proj", "mlp.up_proj")
    attn_writer: str = "self_attn.o_proj"
    mlp_writer: str = "mlp.down_proj"
    value: str = "self_attn.v_proj"
    online_input: str = "mlp.down_proj"
    act_online_inputs: tuple[str, ...] = ("self_attn.o_proj",)
    final_norm: str = "norm"
    norm_offset: float = 0.0


_LLAMA = FoldRule()
FOLD_RULES: dict[str, FoldRule] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,  # q_norm / k_norm act on q and k outputs, which stay unrotated
    "granite": _LLAMA,  # its multipliers are scalars: they commute with the rotations
    "gemma": FoldRule(norm_offset=1.0),  # x (1 + w); the embedding's sqrt(hidden) is a scalar
    "phi3": FoldRule(attn_readers=("self_attn.qkv_proj",), mlp_readers=("mlp.gate_up_proj",),
                     value="self_attn.qkv_proj"),
}
"""model_type -> where its blocks keep what ``fused`` folds. Families not listed run ``layer``."""


def fused_unsupported_reason(model: nn.Module) -> str | None:
    """Why ``fused`` cannot rewrite this model exactly (None: it can)."""
    mtype = getattr(getattr(model, "config", None), "model_type", None)
    if mtype not in FOLD_RULES:
        return (f"model_type {mtype!r} is not one of the families whose norms and blocks the fused plan folds "
                f"exactly ({', '.join(sorted(FOLD_RULES))}: pre-norm RMSNorm blocks without expert stacks)")
    rule = FOLD_RULES[mtype]
    _, blocks = decoder_blocks(model)
    for i, block in enumerate(blocks):
        for name in (rule.attn_norm, rule.mlp_norm, *rule.attn_readers, *rule.mlp_readers, rule.attn_writer,
                     rule.mlp_writer, rule.value):
            try:
                mod = block.get_submodule(name)
            except AttributeError:
                return f"block {i} has no {name!r} (the {mtype} fold rule expects it)"
            if getattr(mod, "weight", None) is None or (mod.weight.dim() == 2) != (name not in (rule.attn_norm, rule.mlp_norm)):
                return f"block {i}: {name!r} is a {type(mod).__name__}, not what the {mtype} fold rule expects"
    base = getattr(model, "base_model", model)
    if not hasattr(base, rule.final_norm):
        return f"the model has no final norm {rule.final_norm!r}"
    return None


@dataclass(frozen=True)
class StreamRotation:
    """What ``fused`` did to a model (stored in the checkpoint's ``quantization_config["rotation"]``).

    stream_seed / head_seed: seeds of ``Q`` (hidden size) and ``H`` (head size).
    ends: ``"folded"`` (embeddings and LM head rotated offline) or ``"online"`` (tied embeddings:
        the stream is rotated after the embedding and back before the final norm at run time).
    """

    plan: str
    hidden_size: int
    head_dim: int
    stream_seed: int
    head_seed: int
    ends: str

    def to_dict(self) -> dict:
        return {"plan": self.plan, "hidden_size": self.hidden_size, "head_dim": self.head_dim,
                "stream_seed": self.stream_seed, "head_seed": self.head_seed, "ends": self.ends}

    @classmethod
    def from_dict(cls, d: dict) -> StreamRotation:
        try:
            out = cls(str(d["plan"]), int(d["hidden_size"]), int(d["head_dim"]), int(d["stream_seed"]),
                      int(d["head_seed"]), str(d["ends"]))
        except (KeyError, TypeError, ValueError) as e:
            raise QuantizeError(f"bad rotation record in the checkpoint config ({e}): {d!r}") from e
        if out.plan != "fused" or out.ends not in ("folded", "online"):
            raise QuantizeError(f"bad rotation record in the checkpoint config: {d!r}")
        return out


def _seed(seed: int, what: str) -> int:
    return zlib.crc32(f"{seed}:fused:{what}".encode()) & 0x7FFFFFFF


def _head_geometry(config) -> tuple[int, int, int]:
    """``(heads, kv_heads, head_dim)`` from a transformers config."""
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, kv, int(head_dim)


def _rows(t: RandomizedHadamard, w: torch.Tensor) -> torch.Tensor:
    """``T`` applied to every row of ``w`` (a linear reading rotated inputs)."""
    return t.forward(w)


def _cols(t: RandomizedHadamard, w: torch.Tensor) -> torch.Tensor:
    """``T`` applied to every column of ``w [out, in]`` (a linear writing rotated outputs)."""
    return t.forward(w.T.contiguous()).T


def _set(param: torch.Tensor, value: torch.Tensor) -> None:
    param.copy_(value.to(param.dtype))


@torch.no_grad()
def fold_rotations(model: nn.Module, seed: int = 0, streamed: bool = False,
                   device: torch.device | str | None = None) -> StreamRotation:
    """Rewrite ``model`` in place under the ``fused`` plan (see the module docstring); the
    rewritten model computes the same function to float rounding (float64 arithmetic, results
    in each tensor's dtype). Raises :class:`QuantizeError` for a family it cannot fold
    (:func:`fused_unsupported_reason`); call before any quantization.

    ``streamed``: the model is a skeleton whose blocks, LM head and final norm are read later
    (``pvq quantize --stream``): only the embedding is folded here (with folded ends); each block is
    folded by :func:`fold_block` when it is read, and :func:`folded_ends` gives the head and the
    final norm when the checkpoint is written. The same operations on the same tensors: the same
    bits as the in-memory fold. ``device``: where the blocks are folded (each moved there and back;
    the driver passes its own, as it folds a streamed block after moving it there); the embedding and
    the head are folded where they are (on the CPU in both paths)."""
    reason = fused_unsupported_reason(model)
    if reason is not None:
        raise QuantizeError(f"the fused rotation plan cannot rewrite this model: {reason}; use --rotation layer")
    if model_rotation(model) is not None:
        raise QuantizeError("this model was already rewritten by the fused rotation plan; folding twice is not supported")
    cfg = model.config
    _, _, head_dim = _head_geometry(cfg)
    rec = StreamRotation("fused", int(cfg.hidden_size), head_dim, _seed(seed, "stream"), _seed(seed, "head"),
                         "online" if _tied(model) else "folded")
    q = RandomizedHadamard(rec.hidden_size, rec.stream_seed)
    if not streamed:
        _, blocks = decoder_blocks(model)
        for block in blocks:
            home = next((t.device for t in block.parameters()), None)
            if device is not None and home is not None:
                block.to(device)
            _fold_block(block, model.config, rec)
            if device is not None and home is not None:
                block.to(home)
    if rec.ends == "folded":
        emb = model.get_input_embeddings()
        _fold_rows(q, emb.weight, emb.weight)
        if not streamed:
            rule = FOLD_RULES[cfg.model_type]
            final = getattr(getattr(model, "base_model", model), rule.final_norm)
            head = model.get_output_embeddings()
            _fold_head(q, head.weight, final.weight, rule.norm_offset, head.weight)
            final.weight.fill_(1.0 - rule.norm_offset)
    install_stream_rotation(model, rec)
    return rec


@torch.no_grad()
def fold_block(model: nn.Module, i: int) -> None:
    """Fold block ``i`` of a model whose fused plan was begun by ``fold_rotations(..., streamed=True)``
    (its tensors just read)."""
    rec = model_rotation(model)
    if rec is None:
        raise QuantizeError("fold_block needs a model begun by fold_rotations(model, seed, streamed=True)")
    _, blocks = decoder_blocks(model)
    _fold_block(blocks[i], model.config, rec)


def _fold_block(block: nn.Module, cfg, rec: StreamRotation) -> None:
    """Norms into their readers, the stream rotation into readers and writers, the head rotation into
    v_proj's rows and o_proj's columns, in place."""
    rule = FOLD_RULES[cfg.model_type]
    heads, kv, head_dim = _head_geometry(cfg)
    q = RandomizedHadamard(rec.hidden_size, rec.stream_seed)
    h = RandomizedHadamard(head_dim, rec.head_seed)
    for norm_name, readers in ((rule.attn_norm, rule.attn_readers), (rule.mlp_norm, rule.mlp_readers)):
        norm = block.get_submodule(norm_name)
        g = norm.weight.double() + rule.norm_offset
        for r in readers:
            lin = block.get_submodule(r)
            _set(lin.weight, _rows(q, lin.weight.double() * g))
        norm.weight.fill_(1.0 - rule.norm_offset)
    for w in (rule.attn_writer, rule.mlp_writer):
        lin = block.get_submodule(w)
        _set(lin.weight, _cols(q, lin.weight.double()))
        if lin.bias is not None:
            _set(lin.bias, q.forward(lin.bias.double()))
    value = block.get_submodule(rule.value)
    rows = kv * head_dim
    wv = value.weight.double()
    tail = wv[-rows:].reshape(kv, head_dim, -1)
    wv[-rows:] = h.forward(tail.transpose(1, 2).contiguous()).transpose(1, 2).reshape(rows, -1)
    _set(value.weight, wv)
    if value.bias is not None:
        bv = value.bias.double()
        bv[-rows:] = h.forward(bv[-rows:].reshape(kv, head_dim)).reshape(rows)
        _set(value.bias, bv)
    out = block.get_submodule(rule.attn_writer)
    wo = out.weight.double()
    _set(out.weight, h.forward(wo.reshape(wo.shape[0], heads, head_dim)).reshape(wo.shape))


FOLD_ROWS = 2048
"""Rows of the embedding and the LM head folded at a time, in memory and streamed alike (a streamed
run folds a 7B model's 32,000 x 4096 head without holding it in float64 at once)."""


def _fold_rows(q: RandomizedHadamard, weight: torch.Tensor, out: torch.Tensor,
               gain: torch.Tensor | None = None) -> torch.Tensor:
    """``out[r] = T (weight[r] * gain)`` row block by row block (float64, then ``out``'s dtype); ``out`` may
    be ``weight`` itself."""
    g = None if gain is None else gain.double()
    for s in range(0, weight.shape[0], FOLD_ROWS):
        w = weight[s : s + FOLD_ROWS].double()
        out[s : s + FOLD_ROWS] = _rows(q, w if g is None else w * g).to(out.dtype)
    return out


def _fold_head(q: RandomizedHadamard, weight: torch.Tensor, final: torch.Tensor, offset: float,
               out: torch.Tensor) -> torch.Tensor:
    return _fold_rows(q, weight, out, final.double() + offset)


def folded_ends(model: nn.Module, read) -> dict[str, Callable[[], torch.Tensor]]:
    """The folded outside tensors of a streamed fused model, by full name, each computed when called
    (one at a time: a large head is never held twice): the input embedding, the LM head and the final
    norm's weight (folded ends; ``{}`` for online ends or no fused plan). ``read(name)`` returns a
    source tensor in the dtype the model holds its weights in; the results come in that dtype, as
    :func:`fold_rotations` leaves them in memory."""
    rec = model_rotation(model)
    if rec is None or rec.ends != "folded":
        return {}
    rule = FOLD_RULES[model.config.model_type]
    q = RandomizedHadamard(rec.hidden_size, rec.stream_seed)
    base = getattr(model, "base_model", model)
    final_mod = getattr(base, rule.final_norm)
    names = {id(m): n for n, m in model.named_modules()}
    emb_name = names[id(model.get_input_embeddings())] + ".weight"
    head_name = names[id(model.get_output_embeddings())] + ".weight"
    final_name = names[id(final_mod)] + ".weight"

    @torch.no_grad()
    def embedding() -> torch.Tensor:
        w = read(emb_name)  # (never written: it may be the source's own tensor)
        return _fold_rows(q, w, torch.empty_like(w))

    @torch.no_grad()
    def head() -> torch.Tensor:
        w = read(head_name)
        return _fold_head(q, w, read(final_name), rule.norm_offset, torch.empty_like(w))

    return {emb_name: embedding, head_name: head,
            final_name: lambda: torch.full_like(read(final_name), 1.0 - rule.norm_offset)}


def stream_rotations(model: nn.Module) -> int:
    """Online rotations of the residual stream per token for the whole model (0, or 2 for the
    online ends of a tied fused model)."""
    hook = getattr(model, "_pvq_stream_hook", None)
    return 0 if hook is None else len(hook.handles)


def model_rotation(model: nn.Module) -> StreamRotation | None:
    """The fused plan's record of a model that was folded or loaded as such (None: not fused)."""
    return getattr(model, "_pvq_rotation", None)


def _tied(model: nn.Module) -> bool:
    """Whether the LM head shares the input embedding (by identity, or by the config for a streamed
    skeleton, whose loading by assignment does not keep the sharing)."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or emb is None:
        return False
    return head.weight is emb.weight or (head.weight.is_meta and bool(getattr(model.config, "tie_word_embeddings", False)))


class _StreamHook:
    """Forward hooks that rotate the residual stream after the embedding and back before the final
    norm (the ``online`` ends of a tied model); they keep the rotation, a model attribute keeps them."""

    def __init__(self, rotation: StreamRotation):
        self.rotation = rotation
        self.q = RandomizedHadamard(rotation.hidden_size, rotation.stream_seed)
        self.handles: list = []

    def after_embedding(self, module, args, output):
        return self.q.forward(output)

    def before_final_norm(self, module, args):
        return (self.q.inverse(args[0]), *args[1:])


def install_stream_rotation(model: nn.Module, rotation: StreamRotation | dict | None) -> None:
    """Record a model's fused plan (:func:`model_rotation`) and install what it runs besides its
    tensors: the online ends of a tied model (``folded`` ends need nothing). Both loaders call this
    with the checkpoint's record. Idempotent: a second call replaces the first's hooks."""
    old = getattr(model, "_pvq_stream_hook", None)
    if old is not None:
        for handle in old.handles:
            handle.remove()
        model._pvq_stream_hook = None
    if rotation is None:
        model._pvq_rotation = None
        return
    rec = rotation if isinstance(rotation, StreamRotation) else StreamRotation.from_dict(rotation)
    model._pvq_rotation = rec
    if rec.ends != "online":
        return
    rule = FOLD_RULES.get(getattr(model.config, "model_type", None))
    base = getattr(model, "base_model", model)
    final = getattr(base, rule.final_norm if rule else "norm", None)
    emb = model.get_input_embeddings()
    if final is None or emb is None or emb.weight.shape[-1] != rec.hidden_size:
        raise QuantizeError("the checkpoint's fused rotation needs an embedding of the hidden size and a final norm; "
                            "this model has neither (was it saved from another architecture?)")
    hook = _StreamHook(rec)
    hook.handles = [emb.register_forward_hook(hook.after_embedding),
                    final.register_forward_pre_hook(hook.before_final_norm)]
    model._pvq_stream_hook = hook
