"""Prefill's whole-layer decodes one layer ahead, on a side CUDA stream.

Above the fused kernels' rows (prefill) the ``triton`` backend decodes a layer's codes to ``Q' [out, in]`` in the
input's dtype and multiplies by cuBLAS (:meth:`pvq.kernels.backend.TritonBackend._rotated_linear`). The decode
reads only the layer's codes, never the activations, so it need not wait for the layers before it:
:class:`DecodeAhead` decodes the weight of the layer that is expected to run next on a side stream while the
current layer's matmul (and whatever lies between: attention, norms) runs on the main one, and hands it over
through an event. A decode is memory-bound (it writes 90 MB for 11008x4096) and a 512-row matmul compute-bound:
the point is that the two share the GPU instead of taking turns (docs/kernels.md, session 25). Session 19's
chunked decode on a side stream overlapped a layer with itself (smaller matmuls) and was slower; this keeps every
matmul whole.

Which layer comes next is learnt, not declared: every whole-layer decode records its layer as the successor of
the one before it in the same forward pass (:func:`enable_decode_ahead` hooks the model's forward to mark where
a pass starts and ends), so the first prefill runs as before and the later ones decode ahead. A prediction that
turns out wrong (another layer, another dtype, a runtime rebuilt for another device) drops the early decode and
decodes in place: the products are those of the plain path, bit for bit, whatever the order.

Memory: at most one decoded layer more than the plain path (the next one), dropped when the pass ends. Off CUDA
the early decode runs at once on the host (nothing to overlap; the bookkeeping is the same, which is what the CPU
tests check). Never while a CUDA graph is being captured. Off by default (:func:`enable_decode_ahead`) until a GPU
measures it faster: ``python benchmarks/prefill.py`` times a 7B-shaped prefill with and without it.
"""

from __future__ import annotations

import weakref
from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from pvq.errors import QuantizeError
from pvq.models import QuantizedLinear

__all__ = ["DecodeAhead", "LayerDecoder", "enable_decode_ahead"]

LayerDecoder = Callable[[nn.Module, torch.device, torch.dtype], "torch.Tensor | None"]
"""(layer, device, dtype) -> the layer's ``Q' [out, in]`` in ``dtype`` from its prepared runtime on ``device``,
or None where it has none for them (:meth:`pvq.kernels.backend.TritonBackend.decode_prepared`)."""


@dataclass
class _Early:
    """A decode launched ahead: for ``layer`` in ``dtype``, ready once ``ready`` (None off CUDA) has fired."""

    layer: weakref.ref
    dtype: torch.dtype
    weight: torch.Tensor
    ready: torch.cuda.Event | None


class DecodeAhead:
    """Decodes the next ``depth`` layers' weights while the current one multiplies (module docstring). One per model.

    ``depth``: layers decoded ahead (1: the next; 2 also lets a long decode start two products early, e.g. gate/up's
    during q/k/v's product and the attention, where o_proj's short product alone would not hide it; each costs one
    decoded layer of memory). :attr:`hits`: weights taken from an early decode; :attr:`misses`: early decodes
    dropped by a wrong prediction; :attr:`launched`: early decodes started.
    """

    def __init__(self, depth: int = 1) -> None:
        if not isinstance(depth, int) or depth < 1:
            raise QuantizeError(f"decode-ahead depth must be a positive number of layers, got {depth!r}")
        self.depth = depth
        self._successor: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # layer -> weakref to the next
        self._last: weakref.ref | None = None
        self._early: deque[_Early] = deque()  # launched, in the predicted order
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self._hooks: list = []
        self._layers: list[weakref.ref] = []
        self.hits = self.misses = self.launched = 0

    def __deepcopy__(self, memo) -> "DecodeAhead":
        return DecodeAhead(self.depth)  # streams and weak references do not copy: a copied model starts learning anew

    # ------------------------------------------------------------ passes

    def begin_pass(self) -> None:
        """A forward pass starts: its first decode has no predecessor (and what a pass cut short left is dropped)."""
        self.end_pass()

    def end_pass(self) -> None:
        """A forward pass ended: early decodes nobody took are dropped (their memory freed)."""
        self._last = None
        self._early.clear()

    # ------------------------------------------------------------ the backend's entry

    def weight(self, layer: nn.Module, device: torch.device, dtype: torch.dtype, decode: LayerDecoder) -> torch.Tensor:
        """``Q' [out, in]`` of ``layer`` in ``dtype`` on ``device`` for the current stream (from the early decode
        where it was predicted, else decoded now); then the decodes of the predicted next ``depth`` layers that are
        not under way yet are launched."""
        w = self._take(layer, dtype)
        if w is None:
            w = decode(layer, device, dtype)
            if w is None:
                raise QuantizeError(f"decode-ahead: the layer has no prepared runtime on {device} for {dtype}")
        prev = self._last() if self._last is not None else None
        if prev is not None and prev is not layer:
            self._successor[prev] = weakref.ref(layer)
        self._last = weakref.ref(layer)
        if _capturing(device):
            return w
        nxt = layer
        for ahead in range(self.depth):
            ref = self._successor.get(nxt)
            nxt = ref() if ref is not None else None
            if nxt is None or nxt is layer:
                break
            # the queue holds the next len(queue) layers' decodes already; one that cannot be launched ends the walk
            # (a queue with a gap would be dropped at that layer)
            if ahead >= len(self._early) and not self._launch(nxt, device, dtype, decode):
                break
        return w

    def _take(self, layer: nn.Module, dtype: torch.dtype) -> torch.Tensor | None:
        if not self._early:
            return None
        early = self._early.popleft()
        if early.layer() is not layer or early.dtype != dtype:
            self.misses += 1 + len(self._early)
            self._early.clear()
            return None  # dropped: their blocks are the side stream's, reused only after their decodes there
        if early.ready is not None:
            main = torch.cuda.current_stream(early.weight.device)
            main.wait_event(early.ready)
            early.weight.record_stream(main)  # not reused before the main stream's work on it is done
        self.hits += 1
        return early.weight

    def _launch(self, layer: nn.Module, device: torch.device, dtype: torch.dtype, decode: LayerDecoder) -> bool:
        """Start ``layer``'s decode (on the side stream on CUDA); whether it could (a prepared runtime there)."""
        if device.type != "cuda":
            w = decode(layer, device, dtype)
            ready = None
        else:
            side = self._streams.get(device)
            if side is None:
                side = self._streams[device] = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))  # the runtime's tensors were made on the main stream
            with torch.cuda.stream(side):
                w = decode(layer, device, dtype)
                ready = torch.cuda.Event()
                ready.record(side)
        if w is None:
            return False
        self._early.append(_Early(weakref.ref(layer), dtype, w, ready))
        self.launched += 1
        return True

    # ------------------------------------------------------------ attachment

    def attach(self, model: nn.Module) -> int:
        """Serve every :class:`~pvq.models.QuantizedLinear` of ``model`` and mark its forward passes; returns the
        number of layers. Raises if another scheduler serves one of them."""
        layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
        taken = [m for m in layers if m.decode_ahead is not None and m.decode_ahead is not self]
        if taken:
            raise QuantizeError(f"{len(taken)} quantized layers already decode ahead for another model or scheduler; "
                                f"call its remove() first")
        for m in layers:
            m.decode_ahead = self
        self._layers += [weakref.ref(m) for m in layers]
        self._hooks += [model.register_forward_pre_hook(self._pre_hook), model.register_forward_hook(self._post_hook)]
        return len(layers)

    def remove(self) -> None:
        """Detach from the model: its layers decode in place again, the hooks leave, the early decode is dropped."""
        for h in self._hooks:
            h.remove()
        for ref in self._layers:
            m = ref()
            if m is not None and m.decode_ahead is self:
                m.decode_ahead = None
        self._hooks, self._layers = [], []
        self._successor = weakref.WeakKeyDictionary()
        self.end_pass()

    def _pre_hook(self, module, args) -> None:
        if not torch.compiler.is_compiling():  # a compiled step traces no bookkeeping (it runs fused kernels only)
            self.begin_pass()

    def _post_hook(self, module, args, output) -> None:
        if not torch.compiler.is_compiling():
            self.end_pass()


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def enable_decode_ahead(model: nn.Module, depth: int = 1) -> DecodeAhead:
    """Decode each quantized layer's weight ``depth`` layers ahead during prefill (module docstring); returns the
    scheduler (its :meth:`~DecodeAhead.remove` turns it off). Raises if the model has no quantized layer."""
    ahead = DecodeAhead(depth)
    if ahead.attach(model) == 0:
        raise QuantizeError("decode-ahead: the model has no quantized linear layer")
    return ahead
