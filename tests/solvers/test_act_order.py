"""Static groups and act-order in the block-LDLQ solver: exact against a textbook OBS."""

import pytest
import torch

from pvq.codecs import make_codec
from pvq.solvers.hessian import damp
from pvq.solvers.ldlq import act_order_permutation, quantize_layer, quantize_layer_reference


def problem(out_f, in_f, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    idx = torch.arange(in_f, dtype=torch.float64)
    cov = 0.8 ** (idx[:, None] - idx[None, :]).abs()
    x = torch.randn(4 * in_f, in_f, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    x = x * torch.rand(in_f, generator=g, dtype=torch.float64).mul(3).add(0.2)  # uneven, unordered energy
    return w, x.T @ x / x.shape[0]


def textbook(w, h, codec, perm, damp_rel=0.01):
    """OBS one vector at a time over the columns in ``perm`` order (explicit inverse), group
    parameters from the original weights: the definition of static groups + act-order."""
    d, g = codec.dim, codec.group_size
    out_f, in_f = w.shape
    gc = d * g
    grp = w.float().reshape(out_f * in_f // gc, g, d)
    scales = codec.group_scales(grp).reshape(out_f, -1)
    zeros = codec.group_zero_points(grp).reshape(out_f, -1)
    wp = w.double()[:, perm].clone()
    hinv = torch.linalg.inv(damp(h, damp_rel)[perm][:, perm])
    q = torch.zeros_like(wp)
    for c0 in range(0, in_f, d):
        gi = int(perm[c0]) // gc
        blk = wp[:, c0 : c0 + d].float()
        _, qb = codec.encode_decode(blk, scales[:, gi].contiguous(), zeros[:, gi].contiguous())
        q[:, c0 : c0 + d] = qb.double()
        f = hinv
        err = (wp[:, c0 : c0 + d] - q[:, c0 : c0 + d]) @ torch.linalg.inv(f[:d, :d])
        wp[:, c0 + d :] -= err @ f[:d, d:]
        hinv = f[d:, d:] - f[d:, :d] @ torch.linalg.inv(f[:d, :d]) @ f[:d, d:]
    return q[:, torch.argsort(perm)].float()


@pytest.mark.parametrize("dim,group_weights,act", [(1, 8, False), (1, 8, True), (2, 12, True)])
def test_static_and_act_order_match_textbook(dim, group_weights, act):
    w, h = problem(7, 48, seed=dim + 3 * act)
    codec = make_codec("uniform", 2, dim, group_weights=group_weights)
    perm = act_order_permutation(h, dim) if act else torch.arange(48)
    want = textbook(w, h, codec, perm)
    got = quantize_layer(w, h, codec, work_dtype=torch.float64, static_groups=True, act_order=act)
    torch.testing.assert_close(got.weight, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("lazy", [1, 16, 1000])
def test_act_order_lazy_matches_reference_and_stores(lazy):
    w, h = problem(9, 72, seed=11)
    codec = make_codec("uniform", 3, 2, group_weights=24)
    ref = quantize_layer_reference(w, h, codec, work_dtype=torch.float64, act_order=True)
    got = quantize_layer(w, h, codec, work_dtype=torch.float64, act_order=True, lazy_columns=lazy)
    assert torch.equal(got.weight, ref.weight) and torch.equal(got.scales, ref.scales)
    assert torch.equal(got.merged_codes()["q"], ref.merged_codes()["q"])
    # the stored codes are row-major, group-contiguous: they decode to the weight
    stored = got.stored()
    n = w.numel() // codec.dim
    dec = codec.decode(codec.unpack(stored.tensors, n), got.per_vector_scales())
    assert torch.equal(dec.reshape(w.shape), got.weight)


def test_act_order_on_sorted_diagonal_is_static_groups():
    w, h = problem(5, 32, seed=2)
    order = torch.argsort(-torch.diagonal(h), stable=True)
    w, h = w[:, order], h[order][:, order]  # diagonal already decreasing: act-order is the identity
    codec = make_codec("uniform", 2, 1, group_weights=8)
    assert torch.equal(act_order_permutation(h, 1), torch.arange(32))
    a = quantize_layer(w, h, codec, act_order=True)
    s = quantize_layer(w, h, codec, static_groups=True)
    d = quantize_layer(w, h, codec)
    assert torch.equal(a.weight, s.weight)
    assert not torch.equal(s.weight, d.weight)  # static groups change the result


def test_act_order_permutation_keeps_vectors_whole():
    h = torch.diag(torch.tensor([1.0, 5.0, 2.0, 2.0, 9.0, 0.0]))
    assert act_order_permutation(h, 2).tolist() == [4, 5, 0, 1, 2, 3]  # sums 6, 4, 9
    assert act_order_permutation(h, 1).tolist() == [4, 1, 2, 3, 0, 5]  # ties keep column order
