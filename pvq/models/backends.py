"""Runtime backends of :class:`~pvq.models.qlinear.QuantizedLinear`: how a layer's forward runs.

A backend says which layers it can run (codec, layout, device), prepares
runtime tensors from the stored ones after loading (a dense cache, a repacked
code layout, tables), and computes the layer's output. Backends are chosen
per layer, never process-wide: the highest-priority backend that supports the
layer on the input's device, unless the layer names one
(:func:`pvq.models.qlinear.set_backend`). Kernel packages (``pvq.kernels``) register theirs here.

Two reference backends live here and run anywhere:

* ``dense``: decode once, undo the rotations, cache ``W`` in the input dtype,
  ``y = W x + b`` (the CPU path: plain matmul speed);
* ``dense-rotated``: cache ``Q'`` (rotated coordinates) and compute
  ``y = U^T (Q' (V x)) + b`` - the forward that kernels reading the codes
  implement, and the reference they are tested against.
"""

from __future__ import annotations

import abc
from contextlib import contextmanager
from contextvars import ContextVar
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pvq.errors import QuantizeError

QuantizedLinear = nn.Module
"""What backends receive: a :class:`pvq.models.qlinear.QuantizedLinear` (not imported here:
``qlinear`` imports this module)."""

__all__ = ["BACKENDS", "GATED_ACTIVATIONS", "Backend", "DenseBackend", "DenseRotatedBackend",
           "programmatic_launch_wanted", "programmatic_launches", "register_backend", "select_backend"]

_PROGRAMMATIC_LAUNCH: ContextVar[bool] = ContextVar("pvq_programmatic_launch", default=False)


@contextmanager
def programmatic_launches(enabled: bool = True):
    """Inside the block (this thread or task only), kernels that can launch as programmatic dependent launches
    (Hopper and later: a kernel's prologue overlaps the previous kernel's end) do so where ``enabled``. Worth it only
    where the kernels before them let them start early: a decode step compiled with inductor's ``triton.enable_pdl``
    (:mod:`pvq.models.compile_ops` sets it for the layers :func:`~pvq.models.qlinear.prepare_for_compile` was told
    of; docs/kernels.md, session 31); elsewhere it measured 1-2% slower."""
    token = _PROGRAMMATIC_LAUNCH.set(bool(enabled))
    try:
        yield
    finally:
        _PROGRAMMATIC_LAUNCH.reset(token)


def programmatic_launch_wanted() -> bool:
    """Whether the calling code runs inside :func:`programmatic_launches` (enabled)."""
    return _PROGRAMMATIC_LAUNCH.get()


GATED_ACTIVATIONS = {"silu": F.silu}
"""Activations of gated MLPs (``down(act(gate) * up)``) that :meth:`Backend.gated_linear` takes, by name."""


class Backend(abc.ABC):
    """One way to run a quantized layer's forward.

    name: registry key; priority: higher wins when several support a layer.
    """

    name: ClassVar[str] = ""
    priority: ClassVar[int] = 0
    quantizes_activations: ClassVar[bool] = False
    """True: runs only layers that quantize their input (``layer.act_quant``), and applies it;
    False: runs only layers that do not (:mod:`pvq.models.activations`)."""

    @abc.abstractmethod
    def supports(self, layer: QuantizedLinear, device: torch.device) -> bool:
        """Whether this backend runs ``layer`` (its codec, layout) on ``device``."""

    @abc.abstractmethod
    def prepare(self, layer: QuantizedLinear, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Runtime tensors for ``layer`` on ``device`` for inputs of ``dtype`` (kept by the layer
        as non-persistent buffers and handed back to :meth:`linear`)."""

    @abc.abstractmethod
    def linear(self, layer: QuantizedLinear, runtime: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``y = W x + b`` for ``x: [..., in]`` -> ``[..., out]`` in ``x``'s dtype."""

    def gated_linear(self, layer: QuantizedLinear, runtime: dict[str, torch.Tensor], gate: torch.Tensor,
                     up: torch.Tensor, activation: str) -> torch.Tensor:
        """``linear(act(gate) * up)`` for ``gate, up: [..., in]`` (a gated MLP's down projection); a backend
        with a kernel that takes the gated product together with the layer's input rotation overrides it."""
        if activation not in GATED_ACTIVATIONS:
            raise QuantizeError(f"gated activation must be one of {', '.join(GATED_ACTIVATIONS)}, got {activation!r}")
        return self.linear(layer, runtime, GATED_ACTIVATIONS[activation](gate) * up)

    def is_current(self, runtime: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> bool:
        """Whether ``runtime`` was prepared for this device and input dtype."""
        return all(t.device == device for t in runtime.values())

    def still_runs(self, layer: QuantizedLinear, runtime: dict[str, torch.Tensor], device: torch.device) -> bool:
        """Whether this backend, which prepared ``runtime`` for ``layer``, still runs it on ``device`` (asked on
        every forward: a backend whose :meth:`supports` is slow may answer from what it recorded in ``runtime``)."""
        return self.supports(layer, device)

    def automatic_on(self, device: torch.device) -> bool:
        """Whether automatic selection may pick this backend on ``device`` (a backend that runs
        somewhere only for testing, e.g. Triton's CPU interpreter, says no there)."""
        return True


BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Add a backend instance to :data:`BACKENDS` (names are unique)."""
    if not backend.name:
        raise RuntimeError("a backend needs a name")
    if backend.name in BACKENDS:
        raise RuntimeError(f"backend {backend.name!r} registered twice")
    BACKENDS[backend.name] = backend
    return backend


def select_backend(layer: QuantizedLinear, device: torch.device, prefer: str | None = None) -> Backend:
    """The backend that runs ``layer`` on ``device``: ``prefer`` if given, else the highest priority."""
    if prefer is not None:
        if prefer not in BACKENDS:
            raise QuantizeError(f"unknown backend {prefer!r}; registered: {', '.join(sorted(BACKENDS))}")
        backend = BACKENDS[prefer]
        if backend.quantizes_activations != _quantizes_input(layer):
            raise QuantizeError(
                f"backend {prefer!r} " + ("quantizes activations, and this layer does not" if backend.quantizes_activations
                                          else "does not quantize activations, and this layer does")
                + f"; backends that run it on {device}: {', '.join(b.name for b in _supporting(layer, device)) or 'none'}"
            )
        if not backend.supports(layer, device):
            raise QuantizeError(
                f"backend {prefer!r} cannot run {layer.codec.describe()} (layout {layer.layout!r}) on {device}; "
                f"backends that can: {', '.join(b.name for b in _supporting(layer, device)) or 'none'}"
            )
        return backend
    found = [b for b in _supporting(layer, device) if b.automatic_on(device)]
    if not found:
        raise QuantizeError(f"no backend runs {layer.codec.describe()} (layout {layer.layout!r}) on {device}")
    return found[0]


def _quantizes_input(layer: QuantizedLinear) -> bool:
    return getattr(layer, "act_quant", None) is not None


def _supporting(layer: QuantizedLinear, device: torch.device) -> list[Backend]:
    act = _quantizes_input(layer)
    found = (b for b in BACKENDS.values() if b.quantizes_activations == act and b.supports(layer, device))
    return sorted(found, key=lambda b: -b.priority)


# ---------------------------------------------------------------- reference backends


class DenseBackend(Backend):
    """Decode once into ``W = U^T Q' V`` in the input dtype; plain ``F.linear``."""

    name = "dense"
    priority = 0

    def supports(self, layer, device):
        return True

    def prepare(self, layer, device, dtype):
        return {"weight": layer.dequantize(dtype).to(device)}

    def is_current(self, runtime, device, dtype):
        w = runtime.get("weight")
        return w is not None and w.device == device and w.dtype == dtype

    def linear(self, layer, runtime, x):
        bias = None if layer.bias is None else layer.bias.to(x.dtype)
        return F.linear(x, runtime["weight"], bias)


class DenseRotatedBackend(Backend):
    """Cache ``Q'``; ``y = U^T (Q' (V x)) + b``: the forward in rotated coordinates."""

    name = "dense-rotated"
    priority = -1

    def supports(self, layer, device):
        return True

    def prepare(self, layer, device, dtype):
        return {"rotated_weight": layer.rotated_weight().to(device=device, dtype=dtype)}

    def is_current(self, runtime, device, dtype):
        w = runtime.get("rotated_weight")
        return w is not None and w.device == device and w.dtype == dtype

    def linear(self, layer, runtime, x):
        xr = layer.rotate_input(x)
        y = layer.unrotate_output(F.linear(xr, runtime["rotated_weight"]))
        return y if layer.bias is None else y + layer.bias.to(y.dtype)


register_backend(DenseBackend())
register_backend(DenseRotatedBackend())
