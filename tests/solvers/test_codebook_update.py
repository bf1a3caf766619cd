"""Codebook update after assignment (conjugate gradients on the layer's output error)."""

import torch

from pvq.codecs import make_codec
from pvq.solvers import SolverConfig, quantize_linear
from pvq.solvers.codebook_update import update_codebooks
from pvq.solvers.ldlq import proxy_loss, quantize_layer


def problem(out_f=16, in_f=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    x = torch.randn(200, in_f, generator=g, dtype=torch.float64) * torch.linspace(0.3, 2.0, in_f, dtype=torch.float64)
    x[:, 1:] += 0.5 * x[:, :-1].clone()
    return w, x.T @ x / 200


def test_update_reaches_the_least_squares_codebook():
    """With the codes fixed, Q is linear in the codebook: CG (k*D steps) finds the normal-equation optimum."""
    w, h = problem()
    codec = make_codec("gptvq", 1, 2, group_weights=8, codebook_bits=16)  # 4 centroids of D = 2
    scale = codec.group_scales(w.reshape(-1, 4, 2)).repeat_interleave(4)
    fitted = codec.fit(w.reshape(-1, 2), scale)
    res = quantize_layer(w, h, fitted, group_size=4, hessian_gain=False)
    codes, s = res.merged_codes(), res.per_vector_scales()
    new = update_codebooks(res.codec, w, h, codes, s, iters=8)
    # normal equations: vec(Q) = L c, loss = sum_r (w_r - q_r) H (w_r - q_r)^T
    k, d = 4, 2
    cols = torch.zeros(w.numel(), k * d, dtype=torch.float64)
    idx = codes["index"]
    for v in range(idx.shape[0]):
        for j in range(d):
            cols[v * d + j, idx[v] * d + j] = float(s[v])
    hb = torch.block_diag(*[h] * w.shape[0])
    c = torch.linalg.solve(cols.T @ hb @ cols, cols.T @ hb @ w.double().reshape(-1))
    best = proxy_loss(w, (cols @ c).float().reshape(w.shape), h)
    got = proxy_loss(w, new.decode(codes, s).reshape(w.shape), h)
    assert got <= best * (1 + 2e-3)  # fp16 rounding of the stored codebook
    assert got < res.proxy_loss


def test_alternation_never_raises_the_proxy_loss():
    w, h = problem(24, 64, seed=5)
    solver = SolverConfig(hessian_gain=True)
    base = make_codec("aqlm", 2, 8, codebook_bits=4, group_weights=32)
    losses = []
    for rounds in (0, 1, 3):
        codec = type(base)(**{**base.config(), "update_rounds": rounds})
        losses.append(quantize_linear(w, h, codec, None, solver).proxy_loss)
    assert losses[1] <= losses[0] and losses[2] <= losses[1]
    assert losses[2] < 0.99 * losses[0]
