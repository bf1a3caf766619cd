"""Per-coordinate importances from a layer's Hessian (K-means fits)."""

import pytest
import torch

from pvq.codecs.kmeans import weighted_assign, weighted_kmeans
from pvq.errors import SolverError
from pvq.solvers.importance import (
    hessian_diag_importance,
    importance,
    importance_reference,
    obs_saliency_importance,
)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def _layer(out, inp, seed):
    w = torch.randn(out, inp, generator=gen(seed))
    col_scale = torch.logspace(-1, 1, inp)[torch.randperm(inp, generator=gen(seed + 1))]
    x = torch.randn(4 * inp, inp, generator=gen(seed + 2)) * col_scale
    h = x.T @ x / x.shape[0]
    return w, h


@pytest.mark.parametrize("out,inp,dim", [(3, 6, 2), (5, 12, 4), (2, 8, 8), (7, 5, 1)])
@pytest.mark.parametrize("kind", ["hessian", "obs"])
def test_importance_match_loop_reference(out, inp, dim, kind):
    w, h = _layer(out, inp, out * inp)
    fast = importance(w, h, dim, kind)
    ref = importance_reference(w, h, dim, kind)
    assert fast.shape == (out * inp // dim, dim)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    assert importance(w, h, dim, "none") is None


def test_importance_values_and_validation():
    w, h = _layer(2, 4, 0)
    dw = hessian_diag_importance(h, 2, 2)
    assert torch.equal(dw[0], torch.diagonal(h)[:2]) and torch.equal(dw[3], torch.diagonal(h)[2:])
    # diagonal H: OBS saliency is w^2 (h_ii + damp)
    hdiag = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    sal = obs_saliency_importance(w, hdiag, 4, damp_rel=0.0)
    torch.testing.assert_close(sal, (w.double() ** 2 * torch.tensor([1.0, 2.0, 3.0, 4.0])).float())
    with pytest.raises(SolverError, match="importance must be"):
        importance(w, h, 2, "diag2")
    with pytest.raises(SolverError, match="dividing"):
        importance(w, h, 3, "hessian")
    with pytest.raises(SolverError, match="Hessian must be"):
        importance(w, h[:3, :3], 2, "obs")


@pytest.mark.parametrize("kind", ["hessian", "obs"])
def test_hessian_weighted_kmeans_beats_plain_on_weighted_error(kind):
    w, h = _layer(48, 32, 5)
    dim, k = 4, 16
    x = w.reshape(-1, dim)
    imp = importance(w, h, dim, kind)
    cw, aw, ew = weighted_kmeans(x, k, imp, iters=30, seed=1)
    cu, _, _ = weighted_kmeans(x, k, None, iters=30, seed=1)
    _, dist_u = weighted_assign(x, imp, cu)  # plain codebook, best weighted assignment
    assert ew < 0.9 * float(dist_u.sum())
