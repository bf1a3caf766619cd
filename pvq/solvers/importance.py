"""Per-coordinate importances of a layer's weight vectors, from its Hessian.

Codecs that fit data on a layer (K-means codebooks, LLM-Codebook) weigh each
coordinate of each vector by how much its error costs the layer's output.
The codec names what it wants (``VectorCodec.fit_importance``); these
functions compute it from the layer ``W: [out, in]`` and ``H = E[x x^T]``:

* ``"hessian"`` - ``diag(H)`` per input column (:func:`hessian_diag_importance`);
* ``"obs"`` - OBS saliency ``w^2 / [H^-1]_ii`` (:func:`obs_saliency_importance`),
  with ``H`` damped by :func:`pvq.solvers.hessian.damp` (the solver's one
  meaning of damping);
* ``"none"`` - no importances (plain K-means).

Every result is ``[out * in / D, D]`` float32 in the order of ``W.reshape(-1, D)``.
"""

from __future__ import annotations

import torch

from pvq.errors import SolverError

from .hessian import damp

__all__ = [
    "IMPORTANCES",
    "hessian_diag_importance",
    "importance",
    "importance_reference",
    "obs_saliency_importance",
]

IMPORTANCES = ("none", "hessian", "obs")


def _check_layer(w_shape: tuple[int, int], h: torch.Tensor, dim: int) -> tuple[int, int]:
    out, inp = w_shape
    if not isinstance(dim, int) or dim < 1 or inp % dim:
        raise SolverError(f"dim must be a positive integer dividing in_features={inp}, got {dim!r}")
    if h.dim() != 2 or tuple(h.shape) != (inp, inp):
        raise SolverError(f"Hessian must be [{inp}, {inp}] for a weight with {inp} inputs, got {tuple(h.shape)}")
    if not torch.isfinite(h).all():
        raise SolverError("Hessian holds NaN or inf; recollect it from finite activations")
    return out, inp


def hessian_diag_importance(h: torch.Tensor, out_features: int, dim: int) -> torch.Tensor:
    """``diag(H)`` (clamped at 0) for every vector of ``W: [out_features, in]``: ``[out * in / D, D]``."""
    _, inp = _check_layer((out_features, h.shape[-1]), h, dim)
    diag = torch.diagonal(h).float().clamp_min(0.0)
    return diag.reshape(1, inp // dim, dim).expand(out_features, -1, -1).reshape(-1, dim).contiguous()


def obs_saliency_importance(w: torch.Tensor, h: torch.Tensor, dim: int, damp_rel: float = 0.01) -> torch.Tensor:
    """OBS saliency ``w_rc^2 / [H^-1]_cc`` per weight of ``w: [out, in]``, as ``[out * in / D, D]``.

    ``H`` is damped with :func:`~pvq.solvers.hessian.damp` (``damp_rel``) before
    the inversion (float64).
    """
    out, inp = _check_layer(tuple(w.shape), h, dim)
    hd = damp(h, damp_rel)
    chol, info = torch.linalg.cholesky_ex(hd)
    if int(info) != 0:
        raise SolverError(f"the Hessian is not positive definite even after damping {damp_rel}; raise the damping")
    hinv_diag = torch.diagonal(torch.cholesky_inverse(chol))
    sal = w.double().pow(2) / hinv_diag.to(w.device).reshape(1, inp)
    return sal.float().reshape(-1, dim).contiguous()


def importance(w: torch.Tensor, h: torch.Tensor, dim: int, kind: str | None, damp_rel: float = 0.01):
    """Importances ``[out * in / D, D]`` of ``W: [out, in]``'s vectors, or None for ``kind`` None/"none"."""
    kind = "none" if kind is None else kind
    if kind not in IMPORTANCES:
        raise SolverError(f"importance must be one of {IMPORTANCES}, got {kind!r}")
    if w.dim() != 2:
        raise SolverError(f"w must be [out, in], got {tuple(w.shape)}")
    _check_layer(tuple(w.shape), h, dim)
    if kind == "none":
        return None
    if kind == "hessian":
        return hessian_diag_importance(h, w.shape[0], dim).to(w.device)
    return obs_saliency_importance(w, h, dim, damp_rel)


def importance_reference(w: torch.Tensor, h: torch.Tensor, dim: int, kind: str, damp_rel: float = 0.01):
    """Plain loop reference of :func:`importance` (Python floats; small sizes only)."""
    out, inp = w.shape
    if kind == "none":
        return None
    hd = h.double()
    if kind == "obs":
        hinv = torch.linalg.inv(damp(hd, damp_rel)).tolist()
    rows = []
    for r in range(out):
        for j in range(inp // dim):
            vec = []
            for d in range(dim):
                c = j * dim + d
                if kind == "hessian":
                    vec.append(max(float(hd[c, c]), 0.0))
                else:
                    vec.append(float(w[r, c]) ** 2 / hinv[c][c])
            rows.append(vec)
    return torch.tensor(rows, dtype=torch.float32)
