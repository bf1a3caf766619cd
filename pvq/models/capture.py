"""Replaying a decoder model block by block: captured inputs, stages, Hessians (the driver's tools).

* :func:`capture_block_inputs` - one pass with the decoder blocks replaced by
  recorders: block 0's hidden states and the keyword arguments each block is
  called with (attention mask, positions, rotary embeddings, ...), per batch;
* :func:`run_block` - a block's forward on captured inputs;
* :func:`linear_stages` - a block's linears grouped by shared input, in call order;
* :func:`collect_hessians` - ``E[x x^T]`` of the inputs of named linears.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pvq.errors import QuantizeError
from pvq.solvers import HessianAccumulator

from .structure import decoder_blocks, linear_sizes

__all__ = ["BlockInputs", "block_linears", "capture_block_inputs", "collect_hessians", "linear_stages",
           "module_device", "run_block"]


class StopForward(Exception):
    """Raised by hooks to end a forward pass early."""


@dataclass
class BlockInputs:
    hidden: torch.Tensor  # input of the current block [B, L, H]
    args: tuple  # positional arguments after hidden_states (usually none)
    kwargs: list[dict]  # keyword arguments of each block


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, calib_ids: torch.Tensor, device: torch.device, batch_size: int, place=None
) -> list[BlockInputs]:
    """Inputs of block 0 and the keyword arguments of every block, per batch.

    Runs the whole model (``model(input_ids=...)``) with the blocks replaced by
    recorders; the modules beside the block list on its path (embeddings,
    rotary tables) are moved to ``device`` for the pass; the forward stops
    after the last block. ``place`` (optional) is called on each captured batch and returns what
    to keep (:class:`pvq.models.offload.InputPlacer`: the hidden states on CPU or disk).
    """
    path, layers = decoder_blocks(model)
    moved = []
    parts = path.split(".")
    for depth in range(1, len(parts)):  # siblings of the path below the top (not the output head)
        parent = model.get_submodule(".".join(parts[:depth]))
        for name, child in parent.named_children():
            if name == parts[depth]:
                continue
            moved.append((child, module_device(child)))
            child.to(device)
    batches: list[BlockInputs] = []
    record: dict = {}
    saved = [layer.__dict__.get("forward") for layer in layers]

    def recorder(i: int):
        def forward(*args, **kwargs):
            if args:
                hidden, rest = args[0], tuple(args[1:])
            else:
                hidden, rest = kwargs.pop("hidden_states"), ()
            if i == 0:
                record["hidden"], record["args"] = hidden, rest
            record.setdefault("kwargs", []).append(kwargs)
            if i == len(layers) - 1:
                raise StopForward
            return hidden

        return forward

    try:
        for i, layer in enumerate(layers):
            layer.forward = recorder(i)
        for start in range(0, calib_ids.shape[0], batch_size):
            record.clear()
            ids = calib_ids[start : start + batch_size].to(device)
            try:
                model(input_ids=ids, use_cache=False)
            except StopForward:
                pass
            if "hidden" not in record or len(record.get("kwargs", [])) != len(layers):
                raise QuantizeError(
                    f"{type(model).__name__} did not call its {len(layers)} decoder blocks in order during "
                    "a forward pass; this model family is not supported by the layer-by-layer driver"
                )
            kwargs = [_dedupe(k, record["kwargs"][0]) for k in record["kwargs"]]
            batch = BlockInputs(record["hidden"], record["args"], kwargs)
            record.clear()
            batches.append(batch if place is None else place(batch))
    finally:
        for layer, fwd in zip(layers, saved):
            if fwd is None:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = fwd
        for child, dev in moved:
            if dev is not None:
                child.to(dev)
    return batches


def _dedupe(kwargs: dict, first: dict) -> dict:
    """Share the first block's dict when every value is the same object (saves memory)."""
    if kwargs.keys() == first.keys() and all(kwargs[k] is first[k] for k in kwargs):
        return first
    return kwargs


def module_device(m: nn.Module) -> torch.device | None:
    for t in m.parameters():
        return t.device
    for t in m.buffers():
        return t.device
    return None


def run_block(block: nn.Module, batch: BlockInputs, i: int) -> torch.Tensor:
    out = block(batch.hidden, *batch.args, **batch.kwargs[i])
    return out[0] if isinstance(out, (tuple, list)) else out


def block_linears(block: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """The block's submodules of the given block-relative names."""
    return {n: block.get_submodule(n) for n in names}


@torch.no_grad()
def linear_stages(
    block: nn.Module, batch: BlockInputs, i: int, names: list[str], sequential: bool, units: list[str] = ()
) -> list[list[str]]:
    """Linears grouped by shared input, in call order (one stage when not sequential).

    Runs the block once on the first calibration batch; linears called one
    after another on the same input tensor (q/k/v; gate/up) form one stage.
    ``units`` (e.g. experts modules) are placed in the call order as stages of their own.
    """
    calls: list[tuple[str, torch.Tensor | None]] = []  # the inputs are kept alive so identities stay unique
    mods = block_linears(block, names)
    hooks = [mods[n].register_forward_hook(lambda m, inp, out, n=n: calls.append((n, inp[0]))) for n in names]
    hooks += [block.get_submodule(u).register_forward_pre_hook(lambda m, inp, u=u: calls.append((u, None)))
              for u in units]
    try:
        run_block(block, batch, i)
    finally:
        for h in hooks:
            h.remove()
    seen = {n for n, _ in calls}
    missing = [n for n in [*names, *units] if n not in seen]
    if missing:
        raise QuantizeError(
            f"layers {missing} of block {i} are never called in its forward pass; cannot collect their Hessians"
        )
    order: list[list[str]] = []
    last = None
    for n, x in calls:
        if any(n in s for s in order):
            continue
        if order and x is not None and x is last:
            order[-1].append(n)
        else:
            order.append([n])
        last = x
    if sequential:
        return order
    return [[n for s in order for n in s if n not in units]] + [[u] for u in units]


@torch.no_grad()
@torch.no_grad()
def norm_output_hessian(norm: nn.Module, batches: list[BlockInputs], in_features: int,
                        device: torch.device) -> HessianAccumulator:
    """``E[x x^T]`` of ``norm(hidden)`` over the batches (the LM head's input: the final norm of the last
    block's outputs), ``norm`` run on ``device`` and put back where it was."""
    acc = HessianAccumulator(in_features, device=device)
    home = module_device(norm)
    norm.to(device)
    for b in batches:
        acc.add(norm(b.hidden.to(device)))
    norm.to(home if home is not None else device)
    return acc


def collect_hessians(
    block: nn.Module, batches: list[BlockInputs], i: int, names: list[str], device: torch.device
) -> dict[str, HessianAccumulator]:
    """``{name: accumulator}`` of ``E[x x^T]`` over the inputs of the named linears of block ``i``.

    Linears that read the same input tensor (q/k/v; gate/up) share one accumulator, the same
    object under each name: the sum is accumulated once, and equals, bit for bit, what separate
    accumulators of the same tensor would hold.
    """
    mods = block_linears(block, names)
    accs: dict[str, HessianAccumulator] = {}
    leader: dict[str, str] = {}  # name -> the name whose accumulator it reads (itself when it adds)
    seen: list[tuple[torch.Tensor, str]] = []  # the inputs added in this batch, by identity
    pending: set[str] = set()
    first = [True]

    def hook(n):
        def fn(m, inp, out):
            x = inp[0]
            owner = next((k for t, k in seen if t is x), None) or n
            if first[0]:
                leader.setdefault(n, owner)
            if leader[n] != owner:
                raise QuantizeError(f"block {i}: {n} shared its input with {leader[n]} on the first calibration "
                                    f"batch and not on a later one; its Hessian cannot be collected")
            if owner == n and not any(t is x for t, _ in seen):
                if n not in accs:
                    accs[n] = HessianAccumulator(linear_sizes(m)[0], device=device)
                accs[n].add(x.detach())
                seen.append((x, n))
            pending.discard(n)
            if not pending:
                raise StopForward

        return fn

    hooks = [mods[n].register_forward_hook(hook(n)) for n in names]
    try:
        for b in batches:
            pending.update(names)
            seen.clear()
            try:
                run_block(block, b, i)
            except StopForward:
                pass
            first[0] = False
    finally:
        for h in hooks:
            h.remove()
        seen.clear()
    return {n: accs[leader[n]] for n in names}
