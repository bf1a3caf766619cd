"""Quantized layers as single operators for ``torch.compile``.

A compiled decode step should fuse what lies between the products (norms, rotary embeddings,
residual adds, KV-cache writes: a few hundred small kernels a step at 7B) and leave each quantized
product to its backend (Triton or CUDA kernels, run-time layouts built on first use, online
rotations). Tracing into a backend would graph-break at every CUDA-extension call (and then
recompile per block, past Dynamo's limit), so a layer prepared here is, inside a compiled graph,
one opaque operator:

* ``pvq::quantized_linear(x [..., in], handle) -> [..., out]``: the layer's ``forward``;
* ``pvq::quantized_gated_linear(gate, up [..., in], handle, activation) -> [..., out]``: its
  ``gated_forward`` (a gated MLP's down projection).

``handle`` names the layer in a weak registry (a custom operator takes tensors and plain values, not
modules): :func:`~pvq.models.qlinear.prepare_for_compile` gives every quantized layer of a model a handle
(:func:`register_for_compile`). A layer without one, or a deep (or pickled) copy of a prepared layer, is traced as
before (a shallow copy shares its original's handle until prepared itself); outside ``torch.compile`` nothing
changes. The operators return a new tensor in the input's dtype.
"""

from __future__ import annotations

import itertools
import weakref
from contextlib import contextmanager

import torch
from torch import nn

from pvq.errors import PvqError

from .backends import programmatic_launches

__all__ = ["HANDLE_ATTR", "CompileHandle", "compile_handle", "is_registered", "quantized_gated_linear",
           "quantized_linear", "register_for_compile"]

HANDLE_ATTR = "_pvq_compile_handle"
"""The attribute of a layer that holds its :class:`CompileHandle` (absent: not prepared)."""

_LAYERS: weakref.WeakValueDictionary[int, nn.Module] = weakref.WeakValueDictionary()
_HANDLES = itertools.count(1)


class CompileHandle:
    """A layer's handle (``value``, an int; 0: none). A deep copy or an unpickled copy holds 0, so a copied
    layer is traced as before rather than running the layer it was copied from; ``torch.compile`` reads
    ``value`` as a constant (guarded) while tracing. ``programmatic``: the operators run the layer inside
    :func:`~pvq.models.backends.programmatic_launches` (its kernels launched as programmatic dependent launches:
    for a step compiled with inductor's ``triton.enable_pdl``; read when the operator runs, not traced)."""

    __slots__ = ("programmatic", "value")

    def __init__(self, value: int = 0, programmatic: bool = False) -> None:
        self.value = int(value)
        self.programmatic = bool(programmatic)

    def __deepcopy__(self, memo: dict) -> CompileHandle:
        return CompileHandle(0)

    def __reduce__(self):
        return CompileHandle, (0,)

    def __repr__(self) -> str:
        return f"CompileHandle({self.value}{', programmatic' if self.programmatic else ''})"


def register_for_compile(layer: nn.Module) -> int:
    """Give ``layer`` (a module with ``out_features`` whose ``forward``/``gated_forward`` call the operators
    below while compiling) a fresh handle and return it."""
    handle = next(_HANDLES)
    _LAYERS[handle] = layer
    setattr(layer, HANDLE_ATTR, CompileHandle(handle))
    return handle


def compile_handle(module: nn.Module) -> int:
    """``module``'s handle (0: not prepared, or a deep or pickled copy of a prepared layer). Read inside a
    compiled graph as a plain attribute (a constant while tracing: no call ``torch.compile`` must trust)."""
    holder = getattr(module, HANDLE_ATTR, None)
    return holder.value if holder is not None else 0


def is_registered(module: nn.Module) -> bool:
    """Whether ``module`` holds a handle and is that handle's registered layer (not a shallow copy of it)."""
    handle = compile_handle(module)
    return bool(handle) and _LAYERS.get(handle) is module


def _layer(handle: int) -> nn.Module:
    layer = _LAYERS.get(handle)
    if layer is None:
        raise PvqError(f"no quantized layer has compile handle {handle} (the model was freed or copied after "
                       f"prepare_for_compile); call pvq.models.prepare_for_compile on the model that runs, then "
                       f"compile again")
    return layer


@contextmanager
def _running(handle: int):
    """The layer ``handle`` (:func:`_layer`), run inside :func:`~pvq.models.backends.programmatic_launches` as its
    handle asks (:class:`CompileHandle`)."""
    layer = _layer(handle)
    with programmatic_launches(getattr(layer, HANDLE_ATTR).programmatic):
        yield layer


def _output(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], layer.out_features))


@torch.library.custom_op("pvq::quantized_linear", mutates_args=())
def quantized_linear(x: torch.Tensor, handle: int) -> torch.Tensor:
    """The layer ``handle``'s product ``[..., in] -> [..., out]`` in ``x``'s dtype."""
    # the layer's own forward (not compiling here, so its backend runs); contiguous: what eager calls pass, a
    # compiled graph may hand over another layout
    with _running(handle) as layer:
        return layer.forward(x.contiguous()).to(x.dtype)


@quantized_linear.register_fake
def _(x: torch.Tensor, handle: int) -> torch.Tensor:
    return _output(_layer(handle), x)


@torch.library.custom_op("pvq::quantized_gated_linear", mutates_args=())
def quantized_gated_linear(gate: torch.Tensor, up: torch.Tensor, handle: int, activation: str) -> torch.Tensor:
    """The layer ``handle``'s product of ``act(gate) * up`` (``[..., in] -> [..., out]``) in ``gate``'s dtype."""
    with _running(handle) as layer:
        return layer.gated_forward(gate.contiguous(), up.contiguous(), activation).to(gate.dtype)


@quantized_gated_linear.register_fake
def _(gate: torch.Tensor, up: torch.Tensor, handle: int, activation: str) -> torch.Tensor:
    if gate.shape != up.shape:
        raise PvqError(f"a gated product takes gate and up of one shape, got {tuple(gate.shape)} and {tuple(up.shape)}")
    return _output(_layer(handle), gate)
