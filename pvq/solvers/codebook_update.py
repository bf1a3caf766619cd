"""Codebook update after assignment: the codec's data that minimizes the layer's output error.

With the codes and group scales fixed, a codebook codec's reconstruction ``Q`` is linear
in its codebook entries ``c`` (``Q = L(c)``: a gather of centroids, a sum of them for
additive codebooks, times the scales), so the output error on calibration activations
``||(W - Q) X||^2 = tr((W - Q) H (W - Q)^T)`` (``H = X^T X``) is a quadratic in ``c``.
:func:`update_codebooks` minimizes it by conjugate gradients (exact steps; the gradient
from autograd through the codec's differentiable ``decode_trainable``), which is what
GPTVQ's codebook update and AQLM's codebook step do (AQLM with Adam; CG is exact on this
quadratic).

Codecs opt in with two methods:

* ``trainable_data() -> dict[str, Tensor]`` float tensors (the codebooks, unrounded);
* ``decode_trainable(data, codes, scale) -> [n, D]``, linear in ``data`` and equal to
  ``decode`` for the stored data;
* ``with_trainable(data) -> codec`` the codec carrying ``data`` rounded as stored.
"""

from __future__ import annotations

import torch

from pvq.codecs.base import Codes, VectorCodec

__all__ = ["can_update", "update_codebooks"]


def can_update(codec: VectorCodec) -> bool:
    """Whether ``codec`` offers the three methods of a codebook update."""
    return all(callable(getattr(codec, a, None)) for a in ("trainable_data", "decode_trainable", "with_trainable"))


def update_codebooks(
    codec: VectorCodec, w: torch.Tensor, h: torch.Tensor, codes: Codes, scale: torch.Tensor, iters: int = 8
) -> VectorCodec:
    """The codec whose data minimizes ``tr((W - Q) H (W - Q)^T)`` with ``codes`` fixed.

    w: ``[out, in]``; h: ``[in, in]`` (damped or not: the caller's choice); codes of the
    ``out * in / D`` vectors in row-major order; scale: ``[out * in / D]`` per vector.
    ``iters`` conjugate-gradient steps from the codec's current data; the result is never
    worse than the start (a step that does not lower the loss after rounding is dropped).
    """
    out, inp = w.shape
    wf, hf = w.float(), h.float().to(w.device)
    start = {k: v.detach().float().clone() for k, v in codec.trainable_data().items()}

    def recon(data):
        return codec.decode_trainable(data, codes, scale).reshape(out, inp)

    def loss_of(q):
        e = wf - q
        return ((e @ hf) * e).sum()

    def grad(data):
        with torch.enable_grad():  # the driver quantizes under no_grad
            params = {k: v.detach().clone().requires_grad_(True) for k, v in data.items()}
            loss = loss_of(recon(params))
            g = torch.autograd.grad(loss, list(params.values()))
        return {k: gi.detach() for k, gi in zip(params, g)}, float(loss.detach())

    def dot(a, b):
        return sum(float((a[k].double() * b[k].double()).sum()) for k in a)

    x = {k: v.clone() for k, v in start.items()}
    g, _ = grad(x)
    r = {k: -v / 2 for k, v in g.items()}  # residual b - A x
    p = {k: v.clone() for k, v in r.items()}
    rr = dot(r, r)
    for _ in range(iters):
        if rr <= 0:
            break
        with torch.no_grad():
            lp = recon(p)  # L(p): the linear map applied to the direction
            curv = float(((lp @ hf) * lp).sum())
        if not curv > 0:
            break
        alpha = rr / curv
        x = {k: x[k] + alpha * p[k] for k in x}
        g, _ = grad(x)
        r = {k: -v / 2 for k, v in g.items()}
        rr_new = dot(r, r)
        beta = rr_new / rr
        p = {k: r[k] + beta * p[k] for k in r}
        rr = rr_new
    with torch.no_grad():
        old = float(loss_of(codec.decode(codes, scale).reshape(out, inp)))
        new_codec = codec.with_trainable(x)
        new = float(loss_of(new_codec.decode(codes, scale).reshape(out, inp)))
    return new_codec if new < old else codec
