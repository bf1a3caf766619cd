"""Block-level fine-tuning of codebooks and scales (AQLM's step after a block is quantized).

After the driver quantizes a decoder block, :class:`BlockFinetune` tunes, with every code fixed,
the codebooks (``codec.trainable_data``) and the fp16 group scales of the block's quantized
linears so that the block's output on the calibration inputs comes closer to the output of the
block before quantization, by Adam on the mean squared error (AQLM, Egiazarian et al. 2024,
section 3.4; AQLM also tunes the block's norms, which stay as they are here). The tuned values
are rounded to what is stored (fp16 codebooks and scales), so the stored bytes, the rate and
the checkpoint format do not change; when the rounded result is not better on the calibration
inputs than the start, the start is kept.

Codecs opt in with the codebook-update methods (:mod:`pvq.solvers.codebook_update`):
``trainable_data``, ``decode_trainable`` and ``with_trainable``; layers whose codec lacks them
(PVQ, scalar grids) are left alone, and a run whose layers all lack them is refused before any
work.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pvq.codecs.base import fp16_exact
from pvq.errors import QuantizeError
from pvq.solvers.codebook_update import can_update

from .capture import BlockInputs, run_block
from .qlinear import SCALE_KEY, QuantizedLinear

__all__ = ["BlockFinetune", "tunable_layers"]


def tunable_layers(block: nn.Module) -> dict[str, QuantizedLinear]:
    """The block's quantized linears whose codebooks can be tuned (name -> module)."""
    return {n: m for n, m in block.named_modules()
            if isinstance(m, QuantizedLinear) and can_update(m.fitted_codec()) and m.act_quant is None}


class _Tuned:
    """One layer's trainable copies (codebooks, group scales) and its fixed codes."""

    def __init__(self, layer: QuantizedLinear):
        self.layer = layer
        self.codec = layer.fitted_codec()
        self.codes = layer.codes()
        device = next(iter(self.codes.values())).device  # where the layer's stored tensors are
        self.data = {k: v.detach().float().to(device).clone().requires_grad_(True)
                     for k, v in self.codec.trainable_data().items()}
        self.has_scale = SCALE_KEY in layer.stored_keys
        self.scale = layer.scales.detach().float().clone().requires_grad_(True) if self.has_scale else None

    def params(self) -> list[torch.Tensor]:
        return [*self.data.values(), *([self.scale] if self.has_scale else [])]

    def weight(self, dtype: torch.dtype) -> torch.Tensor:
        """``U^T Q' V`` from the trainable copies, differentiable, ``[out, in]`` in ``dtype`` (as the
        layer's dense path unrotates its decoded weight)."""
        layer = self.layer
        scale = self.scale.repeat_interleave(self.codec.group_size) if self.has_scale else layer.per_vector_scales()
        q = self.codec.decode_trainable(self.data, self.codes, scale).reshape(layer.out_features, layer.in_features)
        return layer.unrotate_weight(q, dtype)

    def rounded(self) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """What would be stored: the codec's data as it stores it, scales fp16-exact (positive)."""
        codec = self.codec.with_trainable({k: v.detach() for k, v in self.data.items()})
        stored = dict(codec.data_tensors())
        scale = None
        if self.has_scale:
            old = self.layer.scales
            s = fp16_exact(self.scale.detach().float())
            scale = torch.where(s > 0, s, old.float()).to(old.dtype)  # a scale tuned through 0 keeps its start
        return stored, scale


@contextmanager
def _functional(layers: list[_Tuned]):
    """Each layer's forward replaced by ``F.linear`` with the trainable weight, restored afterwards."""
    saved = []
    for t in layers:
        layer = t.layer

        def forward(x, t=t, layer=layer):
            x = x if x.is_floating_point() else x.float()
            b = None if layer.bias is None else layer.bias.to(x.dtype)
            return F.linear(x, t.weight(x.dtype), b)

        saved.append((layer, layer.__dict__.get("forward")))
        layer.forward = forward
    try:
        yield
    finally:
        for layer, fwd in saved:
            if fwd is None:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = fwd


@dataclass(frozen=True)
class BlockFinetune:
    """Tune a quantized block's codebooks and scales towards its unquantized outputs.

    steps: Adam steps (one calibration batch each, in order, cycling); lr: Adam's learning rate,
    relative to each tensor's RMS (codebooks and scales differ in scale by orders of magnitude).
    """

    steps: int
    lr: float = 1e-3

    def __post_init__(self):
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise QuantizeError(f"finetune steps must be an integer >= 1, got {self.steps!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise QuantizeError(f"finetune learning rate must be > 0, got {self.lr!r}")

    @torch.no_grad()
    def targets(self, block: nn.Module, batches: list[BlockInputs], i: int) -> list[torch.Tensor]:
        """The block's outputs before quantization, one per batch (on each batch's device)."""
        return [run_block(block, b, i).to(b.hidden.device) for b in batches]

    def tune(self, block: nn.Module, batches: list[BlockInputs], targets: list[torch.Tensor], i: int) -> str | None:
        """Tune block ``i`` (already quantized) in place; returns the report's note."""
        tuned = [_Tuned(m) for m in tunable_layers(block).values()]
        if not tuned:
            return None
        t0 = time.perf_counter()
        before = self._loss(block, batches, targets, i)
        start = [t.rounded() for t in tuned]
        params = [p for t in tuned for p in t.params()]
        groups = [{"params": [p], "lr": self.lr * float(p.detach().float().pow(2).mean().sqrt().clamp(min=1e-8))}
                  for p in params]
        opt = torch.optim.Adam(groups)
        with _functional(tuned), torch.enable_grad():
            for step in range(self.steps):
                b = batches[step % len(batches)]
                y = run_block(block, b, i)
                loss = (y.float() - targets[step % len(batches)].to(y.device).float()).pow(2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        for t in tuned:
            self._store(t.layer, *t.rounded())
        after = self._loss(block, batches, targets, i)
        kept = not after < before
        if kept:  # the rounded tuning did not help on the calibration inputs: back to the start
            for t, s in zip(tuned, start):
                self._store(t.layer, *s)
        return (f"block {i} fine-tune: {self.steps} Adam steps on the codebooks and scales of {len(tuned)} linears, "
                f"output MSE {before:.4g} -> {after:.4g}" + (" (not better: start kept)" if kept else "")
                + f" ({time.perf_counter() - t0:.1f} s)")

    @torch.no_grad()
    def _loss(self, block, batches, targets, i) -> float:
        for m in block.modules():
            if isinstance(m, QuantizedLinear):
                m.clear_cache()
        tot, n = 0.0, 0
        for b, y0 in zip(batches, targets):
            y = run_block(block, b, i)
            tot += float((y.float() - y0.to(y.device).float()).pow(2).sum())
            n += y.numel()
        return tot / max(n, 1)

    @staticmethod
    @torch.no_grad()
    def _store(layer: QuantizedLinear, data: dict[str, torch.Tensor], scale: torch.Tensor | None) -> None:
        stored = layer.stored_tensors()
        for k, v in data.items():
            if k not in stored or stored[k].shape != v.shape:
                raise QuantizeError(f"fine-tuned data {k!r} {tuple(v.shape)} does not match the layer's stored "
                                    f"tensor ({None if k not in stored else tuple(stored[k].shape)})")
            stored[k].copy_(v.to(stored[k].dtype))
        if scale is not None:
            layer.scales.copy_(scale)
        layer.clear_cache()
