"""The solver entry point: quantize one linear layer with any codec.

:func:`quantize_linear` does, for ``W: [out, in]`` and its Hessian
``H = E[x x^T]: [in, in]``:

1. rotate (optional): ``W' = U W V^T`` and ``H' = V H V^T``
   (:class:`~pvq.transforms.LayerRotation`);
2. fit the codec's data on the layer when it has any to fit (a K-means
   codebook), weighted by the per-coordinate importance the codec asks for
   (``codec.fit_importance``, computed from ``W'`` and ``H'``);
3. block LDLQ (:func:`~pvq.solvers.ldlq.quantize_layer`): group scales and
   zero points, error feedback, Hessian-optimal gains where the codec has them;
4. the stored tensors (packed codes, fitted data, fp16 scales).

The driver (layer 4) calls it once per layer; tests call it directly. It
knows nothing of models: what comes in is two tensors and a codec.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import torch

from pvq.codecs.base import VectorCodec
from pvq.errors import SolverError
from pvq.transforms import LayerRotation

from .codebook_update import can_update, update_codebooks
from .importance import importance
from .ldlq import LayerResult, proxy_loss, quantize_layer

__all__ = ["LinearResult", "SolverConfig", "quantize_linear"]


@dataclass(frozen=True)
class SolverConfig:
    """How a layer is solved.

    error_feedback: push each block's error onto the later columns (GPTQ/LDLQ);
        off: per-vector quantization (RTN-style).
    hessian_gain: use the codec's Hessian-optimal encoding where it has one.
    damp: diagonal damping of ``H``, relative to its mean diagonal (also used
        for the OBS importances of fitted codecs).
    static_groups: group scales and zero points from the original weights before
        the column sweep (else from the error-updated weights as the sweep reaches them).
    act_order: sweep vectors by decreasing Hessian diagonal (GPTQ ``desc_act``), with
        static groups so the stored layout stays group-contiguous.
    """

    error_feedback: bool = True
    hessian_gain: bool = True
    damp: float = 0.01
    static_groups: bool = False
    act_order: bool = False

    def __post_init__(self):
        for name in ("error_feedback", "hessian_gain", "static_groups", "act_order"):
            if not isinstance(getattr(self, name), bool):
                raise SolverError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if isinstance(self.damp, bool) or not isinstance(self.damp, (int, float)) or not (
            math.isfinite(self.damp) and self.damp >= 0
        ):
            raise SolverError(f"damp must be a finite number >= 0, got {self.damp!r}")


@dataclass
class LinearResult:
    """One quantized layer.

    codec: the codec that coded (with its fitted data, if any).
    stored: every tensor to write (packed codes, fitted data, ``"scale"`` fp16).
    rotated_weight: ``Q'`` float32 ``[out, in]`` in rotated coordinates,
        bit-identical to decoding ``stored``.
    proxy_loss: ``tr((W - Q) H (W - Q)^T)``; relative_error: over ``tr(W H W^T)``.
    """

    codec: VectorCodec
    stored: dict[str, torch.Tensor]
    rotated_weight: torch.Tensor
    proxy_loss: float
    relative_error: float
    seconds: float

    @property
    def stored_bits(self) -> int:
        return sum(t.numel() * t.element_size() * 8 for t in self.stored.values())


def quantize_linear(
    w: torch.Tensor,
    h: torch.Tensor,
    codec: VectorCodec,
    rotation: LayerRotation | None = None,
    config: SolverConfig = SolverConfig(),
) -> LinearResult:
    """Quantize ``w: [out, in]`` under ``h: [in, in]`` with ``codec`` (see the module docstring).

    Works in float64 for the rotations and float32 for the solve, on ``w``'s device.
    """
    t0 = time.perf_counter()
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        raise SolverError(f"weight must be a float tensor [out, in], got {getattr(w, 'shape', w)!r}")
    if not torch.isfinite(w).all():
        raise SolverError("the weight holds non-finite values (NaN or inf); fix the checkpoint before quantizing")
    if not isinstance(config, SolverConfig):
        raise SolverError(f"config must be a SolverConfig, got {type(config).__name__}")
    out, inp = w.shape
    w = w.detach().to(torch.float64)
    h = h.detach().to(device=w.device, dtype=torch.float64)
    if rotation is not None:
        if (rotation.out_features, rotation.in_features) != (out, inp):
            raise SolverError(
                f"rotation is for [{rotation.out_features}x{rotation.in_features}], the weight is [{out}x{inp}]"
            )
        w = rotation.rotate_weight(w)
        h = rotation.rotate_hessian(h)
    res = _solve(w, h, codec, config)
    if getattr(codec, "target_bits", None) is not None:  # a coded rate: meet it per layer
        res = _meet_rate(w, h, res, config)
    return LinearResult(res.codec, res.stored().tensors, res.weight, res.proxy_loss, res.relative_error,
                        time.perf_counter() - t0)


RATE_PASSES = 4
"""Solves per layer at most, beyond the first, for codecs whose rate is only known after coding."""


def _solve(w: torch.Tensor, h: torch.Tensor, codec: VectorCodec, config: SolverConfig):
    if codec.needs_fit:
        codec = _fit(codec, w, h, config.damp)

    def assign(c):
        return quantize_layer(
            w.float(), h, c, error_feedback=config.error_feedback, damp_rel=config.damp,
            hessian_gain=config.hessian_gain, static_groups=config.static_groups, act_order=config.act_order,
        )

    res = assign(codec)
    rounds = int(getattr(codec, "update_rounds", 0) or 0)
    if rounds and can_update(res.codec):
        res = _alternate(res, w.float(), h, rounds, assign)
    return res


def _meet_rate(w: torch.Tensor, h: torch.Tensor, res, config: SolverConfig):
    """Re-solve with ``codec.retarget(measured rate)`` (an entropy-coded codec's step) until it
    says the measured rate is close enough to ``codec.target_bits``; the result kept is the one
    of highest rate at or below the target (else the lowest rate)."""
    target = res.codec.target_bits

    def rate(r) -> float:
        return r.stored().bits_per_weight()

    best, best_rate = res, rate(res)
    current, current_rate = res, best_rate
    for _ in range(RATE_PASSES):
        nxt = current.codec.retarget(current_rate)
        if nxt is None:
            break
        current = _solve(w, h, nxt, config)
        current_rate = rate(current)
        under, best_under = current_rate <= target + 1e-9, best_rate <= target + 1e-9
        if (under and (not best_under or current_rate > best_rate)) or (not under and not best_under
                                                                         and current_rate < best_rate):
            best, best_rate = current, current_rate
    return best


def _alternate(res: LayerResult, w: torch.Tensor, h: torch.Tensor, rounds: int, assign) -> LayerResult:
    """Codebook update after assignment, up to ``rounds`` times, the codes reassigned (block LDLQ
    with the updated codebook) between updates while that lowers the proxy loss (GPTVQ's update;
    AQLM's alternation of codes and codebooks). Ends on an update."""
    for r in range(rounds):
        new = update_codebooks(res.codec, w, h, res.merged_codes(), res.per_vector_scales())
        if new is res.codec:
            break
        q = new.decode(res.merged_codes(), res.per_vector_scales()).reshape(w.shape).float()
        loss = proxy_loss(w, q, h)
        ref = res.proxy_loss / res.relative_error if res.relative_error > 0 else 0.0
        res = replace(res, weight=q, codec=new, proxy_loss=loss, relative_error=loss / ref if ref > 0 else 0.0)
        if r == rounds - 1:
            break
        again = assign(new)
        if again.proxy_loss >= res.proxy_loss:
            break
        res = again
    return res


def _fit(codec: VectorCodec, w: torch.Tensor, h: torch.Tensor, damp_rel: float) -> VectorCodec:
    """The codec fitted on the (rotated) layer's vectors divided by their group scales,
    weighted by the importance the codec asks for."""
    d, g = codec.dim, codec.group_size
    out, inp = w.shape
    if inp % (d * g):
        raise SolverError(f"in_features={inp} is not a multiple of D*G = {d * g} of {codec.describe()}")
    wf = w.float()
    scale = codec.group_scales(wf.reshape(out * inp // (d * g), g, d)).float().repeat_interleave(g)
    imp = importance(wf, h, d, codec.fit_importance, damp_rel)
    return codec.fit(wf.reshape(-1, d), scale, imp)
