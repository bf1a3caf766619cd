"""Mixture-of-experts weights: per-expert Hessians from routed tokens, and their quantized form.

In transformers 5 an experts module holds each projection of all experts as one
3-D parameter (``gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``; transposed,
``[E, in, out]``, where the module's ``is_transposed`` says so, e.g. GPT-OSS).

* :class:`QuantizedExperts` - a ``ModuleList`` of one :class:`QuantizedLinear`
  per expert (``[out, in]`` each, as the solver quantized it), attached to the
  experts module as ``<param>_pvq`` in place of the 3-D parameter. A forward
  pre-hook on the experts module decodes the stack into the dense 3-D tensor of
  the original layout (cached per device and dtype, like the ``dense``
  backend) and sets it as the plain attribute ``<param>``, so the family's own
  experts forward (eager, grouped_mm, ...) runs unchanged.
* :func:`collect_expert_hessians` - per expert, ``E[x x^T]`` of the tokens
  routed to it, seen through a ``TorchFunctionMode`` that watches the family's
  eager experts forward read ``W[e]`` and multiply by it.
* Routing: the experts module's router/gate weights are not touched (kept in
  their dtype and counted as such in the rate, :func:`pvq.models.format.block_rate`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from pvq.errors import CheckpointError, QuantizeError
from pvq.solvers import HessianAccumulator

from .qlinear import QuantizedLinear

__all__ = ["HOLDER_SUFFIX", "QuantizedExperts", "collect_expert_hessians", "install_experts", "replace_experts"]

HOLDER_SUFFIX = "_pvq"
"""The quantized stack of parameter ``p`` is the submodule ``p + HOLDER_SUFFIX`` of the experts module."""


class QuantizedExperts(nn.ModuleList):
    """One :class:`QuantizedLinear` ``[out, in]`` per expert, standing for the 3-D parameter ``param``.

    transposed: the family stores a slice as ``[in, out]`` (the dense stack is ``[E, in, out]``).
    """

    def __init__(self, param: str, experts: list[QuantizedLinear], transposed: bool):
        super().__init__(experts)
        self.param = param
        self.transposed = bool(transposed)
        self._dense: tuple[tuple, torch.Tensor] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the dense stack in the family's layout."""
        q = self[0]
        a, b = (q.in_features, q.out_features) if self.transposed else (q.out_features, q.in_features)
        return len(self), a, b

    @torch.no_grad()
    def dense(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The decoded stack ``[E, out, in]`` (``[E, in, out]`` when transposed), cached."""
        key = (torch.device(device), dtype)
        if self._dense is None or self._dense[0] != key:
            self._dense = None
            w = torch.stack([q.dequantize(torch.float32) for q in self])
            if self.transposed:
                w = w.transpose(1, 2)
            self._dense = (key, w.to(device=device, dtype=dtype).contiguous())
        return self._dense[1]

    def clear_cache(self) -> None:
        self._dense = None
        for q in self:
            q.clear_cache()

    def extra_repr(self) -> str:
        return f"param={self.param!r}, shape={list(self.shape)}, transposed={self.transposed}"


def _materialize(module: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook of an experts module: put the decoded stacks where its forward reads them."""
    x = args[0] if args else kwargs.get("hidden_states")
    for child in module.children():
        if isinstance(child, QuantizedExperts):
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                device, dtype = x.device, x.dtype
            else:
                device, dtype = child[0]._buffer_device(), torch.float32
            object.__setattr__(module, child.param, child.dense(device, dtype))
    return None


def install_experts(owner: nn.Module, holder: QuantizedExperts) -> None:
    """Replace ``owner``'s 3-D parameter ``holder.param`` by ``holder`` (and the decoding pre-hook)."""
    name = holder.param
    if name in owner._parameters:
        del owner._parameters[name]
    owner.add_module(name + HOLDER_SUFFIX, holder)
    placeholder = torch.empty(holder.shape, device="meta")
    placeholder._is_hf_initialized = True  # transformers' weight init skips it
    object.__setattr__(owner, name, placeholder)
    if not getattr(owner, "_pvq_experts_hook", False):
        owner.register_forward_pre_hook(_materialize, with_kwargs=True)
        owner._pvq_experts_hook = True


def replace_experts(model: nn.Module, experts: dict, modules: dict) -> None:
    """Install empty :class:`QuantizedExperts` for every stack in a checkpoint's ``experts`` entry.

    experts: ``{stack name: {"num_experts", "out_features", "in_features", "transposed"}}``;
    modules: the checkpoint's module entries (``<stack>_pvq.<e>`` per expert).
    """
    for name, cfg in experts.items():
        owner_name, _, param = name.rpartition(".")
        try:
            owner = model.get_submodule(owner_name)
        except AttributeError as e:
            raise CheckpointError(f"quantized experts {name!r} of the checkpoint are not in the model") from e
        holder_name = param + HOLDER_SUFFIX
        if isinstance(getattr(owner, "_modules", {}).get(holder_name), QuantizedExperts):
            continue
        p = owner._parameters.get(param)
        e, out, inp, tr = int(cfg["num_experts"]), int(cfg["out_features"]), int(cfg["in_features"]), bool(cfg["transposed"])
        want = (e, inp, out) if tr else (e, out, inp)
        if p is None or tuple(p.shape) != want:
            raise CheckpointError(
                f"{name!r} is {None if p is None else list(p.shape)} in the model, {list(want)} in the checkpoint"
            )
        qs = []
        for i in range(e):
            entry = modules.get(f"{owner_name}.{holder_name}.{i}")
            if entry is None:
                raise CheckpointError(f"the checkpoint lacks the quantized expert {i} of {name!r}")
            qs.append(QuantizedLinear.from_layer_config(entry, bias_dtype=p.dtype, device=p.device))
        install_experts(owner, QuantizedExperts(param, qs, tr))


# ---------------------------------------------------------------- routed Hessians


class _RoutedInputs(TorchFunctionMode):
    """Records, per tracked 3-D parameter and expert, the inputs multiplied by ``W[e]``.

    ``W[e]`` is seen through ``Tensor.__getitem__`` on the parameter; the input is the
    other operand of ``F.linear(x, W[e])`` (layout ``[out, in]``) or ``x @ W[e]``
    (layout ``[in, out]``).
    """

    def __init__(self, tracked: dict[int, tuple[str, list[HessianAccumulator]]]):
        super().__init__()
        self.tracked = tracked  # id(parameter) -> (stack name, accumulator per expert)
        self.slices: dict[int, tuple[torch.Tensor, str, int]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name == "__getitem__" and args and id(args[0]) in self.tracked:
            idx = args[1]
            if isinstance(idx, torch.Tensor) and idx.numel() == 1:
                idx = int(idx)
            if isinstance(idx, int):
                self.slices[id(out)] = (out, self.tracked[id(args[0])][0], idx)
        elif name in ("linear", "matmul", "__matmul__") and len(args) >= 1:
            w = args[1] if len(args) > 1 else kwargs.get("weight")
            hit = self.slices.get(id(w))
            if hit is not None and hit[0] is w:
                _, name, e = hit
                self._accs(name)[e].add(args[0].detach())
        return out

    def _accs(self, name: str) -> list[HessianAccumulator]:
        for n, accs in self.tracked.values():
            if n == name:
                return accs
        raise KeyError(name)


@torch.no_grad()
def collect_expert_hessians(
    block: nn.Module, owner: str, params: list[str], in_features: dict[str, int], num_experts: int,
    run, batches: list, device: torch.device,
) -> dict[str, list[HessianAccumulator]]:
    """Per stack in ``params`` (attributes of the experts module ``owner``), one Hessian per
    expert of the tokens routed to it, over all calibration ``batches`` (``run(batch)`` runs the
    block). The experts run their eager forward for this (``config._experts_implementation``
    is set to ``"eager"`` meanwhile); the block stops after the experts module."""
    mod = block.get_submodule(owner)
    accs = {p: [HessianAccumulator(in_features[p], device=device) for _ in range(num_experts)] for p in params}
    tracked = {}
    for p in params:
        w = mod._parameters.get(p)
        if w is None:
            raise QuantizeError(f"{owner}.{p} is not a parameter of the experts module")
        tracked[id(w)] = (p, accs[p])
    cfg = getattr(mod, "config", None)
    saved = getattr(cfg, "_experts_implementation", None) if cfg is not None else None
    stop = _Stop()
    handle = mod.register_forward_hook(lambda m, i, o: stop.fire())
    try:
        if cfg is not None:
            cfg._experts_implementation = "eager"
        for b in batches:
            mode = _RoutedInputs(tracked)
            try:
                with mode:
                    run(b)
            except _Stop.Fired:
                pass
            mode.slices.clear()
    finally:
        handle.remove()
        if cfg is not None:
            cfg._experts_implementation = saved
    return accs


class _Stop:
    class Fired(Exception):
        pass

    def fire(self):
        raise _Stop.Fired
