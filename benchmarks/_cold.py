"""Timing a product with its weights out of the GPU's L2 cache, as each layer of a model runs (session 30).

A benchmark that replays one layer's call reads that layer's weights from L2 after the first replay wherever they
fit (H100 and H200: 50 MB; 4096x4096 in fp16 is 33.5 MB, and every pvq or int4 layer of a 7B model fits), so its
memory-bound baselines run at L2's bandwidth, not HBM's, which no model step sees (its layers together are many
times L2). Here a ring of copies of the weights is called in turn inside one CUDA graph, so that between two calls
of one copy the others read more than ``factor`` times L2: each call reads its weights from device memory. The
input (small, just written in a model) stays where it is. The time is the ring's over its length.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch


def ring_length(nbytes: int, l2_bytes: int, factor: float, cap: int = 256) -> int:
    """Copies of ``nbytes`` of weights that a ring needs so that the other copies, called between two calls of one,
    read at least ``factor`` x ``l2_bytes``: 1 + ceil(factor * l2 / nbytes). Raises ValueError past ``cap``."""
    if nbytes <= 0 or l2_bytes <= 0 or factor <= 0:
        raise ValueError(f"need positive bytes, L2 bytes and factor; got {nbytes}, {l2_bytes}, {factor}")
    n = 1 + math.ceil(factor * l2_bytes / nbytes)
    if n > cap:
        raise ValueError(f"{n} copies of {nbytes} bytes needed to read {factor} x {l2_bytes} bytes between calls "
                         f"(at most {cap}): lower the factor or time a larger layer")
    return n


def weight_bytes(weights, shared: tuple[str, ...] = ()) -> int:
    """Bytes of the tensors :func:`weight_copy` copies: a tensor's, or a dataclass's tensors but the ``shared``."""
    if isinstance(weights, torch.Tensor):
        return weights.numel() * weights.element_size()
    return sum(t.numel() * t.element_size() for t in _tensors(weights, shared).values())


def weight_copy(weights, shared: tuple[str, ...] = ()):
    """A new copy of a tensor, or of a dataclass with every tensor cloned (new storage, the same values) but the
    fields named in ``shared`` (what a model's layers share, e.g. the table of points of one rate); its other fields
    shared too."""
    if isinstance(weights, torch.Tensor):
        return weights.clone()
    return dataclasses.replace(weights, **{k: t.clone() for k, t in _tensors(weights, shared).items()})


def _tensors(obj, shared: tuple[str, ...]) -> dict[str, torch.Tensor]:
    if not dataclasses.is_dataclass(obj):
        raise TypeError(f"weights are a tensor or a dataclass of tensors; got {type(obj).__name__}")
    names = {f.name for f in dataclasses.fields(obj) if f.init}
    if set(shared) - names:
        raise ValueError(f"no fields {sorted(set(shared) - names)} in {type(obj).__name__} to share")
    return {k: v for k in names - set(shared) for v in [getattr(obj, k)] if isinstance(v, torch.Tensor)}


def cold_bench(bench: Callable[[Callable], float], make: Callable[[], object], call: Callable[[object], object],
               nbytes: int, l2_bytes: int, factor: float = 3.0) -> float:
    """``bench``'s time (its unit) of one ``call(w)``, ``w`` each of a ring of ``make()`` results (weights of
    ``nbytes`` each, new storage every time: e.g. :func:`weight_copy`) called in turn from one replayed function,
    the ring as long as :func:`ring_length` makes it."""
    n = ring_length(nbytes, l2_bytes, factor)
    copies = [make() for _ in range(n)]
    return bench(lambda: [call(c) for c in copies]) / n


def l2_cache_bytes(device) -> int:
    """The device's L2 cache in bytes (torch's device properties; 50 MB, an H100's and an H200's, if unnamed)."""
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 50 * 2**20)
