import pytest
import torch

from pvq.codecs import CODECS, CodecError, make_codec, quantize_grouped
from pvq.codecs.kmeans import (
    KMeansCodec,
    weighted_assign,
    weighted_assign_reference,
    weighted_distances,
    weighted_kmeans,
)



def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n,d,k,chunk", [(53, 3, 7, 10), (1, 5, 1, 4), (130, 1, 9, 1 << 14), (77, 6, 33, 13)])
def test_weighted_assign_matches_loop_reference(n, d, k, chunk):
    x = torch.randn(n, d, generator=gen(n), dtype=torch.float64)
    w = torch.rand(n, d, generator=gen(n + 1), dtype=torch.float64) ** 2 * 5
    c = torch.randn(k, d, generator=gen(n + 2), dtype=torch.float64)
    assign, dist = weighted_assign(x, w, c, chunk_size=chunk)
    ref_assign, ref_dist = weighted_assign_reference(x, w, c)
    assert torch.equal(assign, ref_assign)
    torch.testing.assert_close(dist, ref_dist, rtol=1e-12, atol=1e-12)
    full = weighted_distances(x, w, c)
    torch.testing.assert_close(full.min(dim=1).values, ref_dist, rtol=1e-9, atol=1e-9)


def test_weights_change_the_clustering():
    # 2-D points; coordinate 0 matters 100x more on half the points, coordinate 1 on the other half
    n = 3000
    x = torch.randn(n, 2, generator=gen(0), dtype=torch.float64)
    w = torch.ones(n, 2, dtype=torch.float64)
    w[: n // 2, 0] = 100.0
    w[n // 2 :, 1] = 100.0
    w *= torch.rand(n, 1, generator=gen(1), dtype=torch.float64) * 3 + 0.1  # per-point importance too
    k = 8

    def weighted_error(c, a):
        return float((w * (x - c[a]) ** 2).sum())

    cw, aw, ew = weighted_kmeans(x, k, w, iters=40, seed=3)
    cu, au, _ = weighted_kmeans(x, k, None, iters=40, seed=3)
    assert ew == pytest.approx(weighted_error(cw, aw), rel=1e-9)
    # the unweighted codebook, even with its points re-assigned under the weighted metric
    _, dist_u = weighted_assign(x, w, cu)
    assert ew < 0.8 * float(dist_u.sum())
    assert ew < 0.8 * weighted_error(cu, au)


def test_kmeans_is_seeded_and_lloyd_steps_do_not_increase_error():
    x = torch.randn(400, 3, generator=gen(5))
    w = torch.rand(400, 3, generator=gen(6)) + 0.1
    a = weighted_kmeans(x, 16, w, iters=10, seed=7)
    b = weighted_kmeans(x, 16, w, iters=10, seed=7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    c = weighted_kmeans(x, 16, w, iters=10, seed=8)
    assert not torch.equal(a[0], c[0])
    init = a[0].clone()
    errors = [weighted_kmeans(x, 16, w, iters=i, init=init)[2] for i in range(6)]
    assert all(e1 <= e0 * (1 + 1e-6) for e0, e1 in zip(errors, errors[1:]))


def test_centroids_are_weighted_means_at_convergence():
    x = torch.randn(300, 2, generator=gen(9), dtype=torch.float64)
    w = torch.rand(300, 2, generator=gen(10), dtype=torch.float64) + 0.05
    c, a, _ = weighted_kmeans(x, 5, w, iters=200, seed=0)
    for j in range(5):
        m = a == j
        expected = (w[m] * x[m]).sum(0) / w[m].sum(0)
        torch.testing.assert_close(c[j], expected, rtol=1e-9, atol=1e-12)


def test_empty_clusters_are_reseeded():
    x = torch.randn(50, 2, generator=gen(11))
    init = torch.randn(6, 2, generator=gen(12))
    init[3:] = 1e3  # three centroids far away: empty after the first assignment
    c, a, _ = weighted_kmeans(x, 6, None, iters=5, init=init)
    assert torch.bincount(a, minlength=6).min() > 0
    assert (c.abs() < 100).all()


def test_kmeans_validation():
    with pytest.raises(CodecError):
        weighted_kmeans(torch.randn(10, 2), 0)
    with pytest.raises(CodecError):
        weighted_kmeans(torch.randn(10, 2), 3, weights=torch.ones(10, 3))
    with pytest.raises(CodecError):
        weighted_kmeans(torch.randn(10, 2), 3, weights=-torch.ones(10, 2))
    with pytest.raises(CodecError):
        weighted_kmeans(torch.randn(10, 2), 3, init="bogus")


# ---------------------------------------------------------------- codec


def test_kmeans_codec_two_bits_dim4_beats_lloyd_max_scalar():
    assert "kmeans" in CODECS and CODECS["kmeans"].default_dim == 4
    codec = make_codec("kmeans", 2)  # dim 4 -> 256 centroids, group of 128 weights
    assert codec.num_centroids == 256 and codec.group_size == 32
    n_weights = 1 << 16
    x = torch.randn(n_weights // 4, 4, generator=gen(20))
    r = quantize_grouped(codec, x)
    mse = float((r.xhat - x).pow(2).mean())
    assert mse < 0.1175  # Lloyd-Max scalar at 2 bits
    # rate measured from the stored bytes: indices + fp16 scales + fp16 codebook
    assert r.stored.bits_per_weight() == 2 + 16 / 128 + 256 * 4 * 16 / n_weights
    assert r.stored.tensors["codebook"].dtype == torch.float16
    # the codebook generalizes: fixed codebook on fresh data still beats scalar Lloyd-Max
    fresh = torch.randn(n_weights // 4, 4, generator=gen(21))
    fixed = KMeansCodec(8, 4, codebook=r.codec.codebook)
    r2 = quantize_grouped(fixed, fresh)
    assert float((r2.xhat - fresh).pow(2).mean()) < 0.1175


@pytest.mark.parametrize("bits,dim,group_weights", [(2, 4, 128), (3, 2, 64), (1.5, 2, 6), (4, 1, 5)])
def test_kmeans_round_trip_exact(bits, dim, group_weights):
    codec = make_codec("kmeans", bits, dim=dim, group_weights=group_weights, iters=5)
    n = (group_weights // dim) * 13
    x = torch.randn(n, dim, generator=gen(dim)) * 0.03
    r = quantize_grouped(codec, x)
    assert set(r.codes) == {"index"} and r.codes["index"].shape == (n,)  # per-vector codes only
    loaded = codec.with_data(r.stored.tensors)  # the config's codec plus the stored codebook
    back = loaded.unpack(r.stored.tensors, n)
    assert torch.equal(back["index"], r.codes["index"])
    assert torch.equal(loaded.codebook, r.codec.codebook)
    scale = r.stored.tensors["scale"].float().repeat_interleave(codec.group_size)
    assert torch.equal(loaded.decode(back, scale), r.xhat)
    expected_bits = -(-n * codec.index_bits // 8) * 8 + 16 * (n // codec.group_size) + codec.codebook_bits()
    assert r.stored.storage_bits() == expected_bits


def test_kmeans_weighted_fit_uses_importance():
    codec = KMeansCodec(3, 2, group_weights=8, iters=30)
    x = torch.randn(400, 2, generator=gen(30))
    w = torch.ones_like(x)
    w[:, 1] = 50.0
    scale = torch.ones(400)
    plain_codec, weighted_codec = codec.fit(x, scale), codec.fit(x, scale, w)
    plain = plain_codec.decode(plain_codec.encode(x, scale), scale)
    weighted = weighted_codec.decode(weighted_codec.encode(x, scale), scale)
    err = lambda xh: float((w * (xh - x) ** 2).sum())  # noqa: E731
    assert err(weighted) < 0.8 * err(plain)


def test_kmeans_from_rate_errors_name_what_works():
    assert make_codec("kmeans", 2.3, dim=4).index_bits == 9
    with pytest.raises(CodecError, match="dim <= 5"):
        make_codec("kmeans", 3, dim=8)  # 24 bits per vector
    with pytest.raises(CodecError):
        make_codec("kmeans", 0.1, dim=2)
    with pytest.raises(CodecError, match="codebook must have shape"):
        KMeansCodec(4, 2, codebook=torch.zeros(8, 2))
    with pytest.raises(CodecError, match="call fit"):
        KMeansCodec(4, 2).encode(torch.zeros(4, 2), torch.ones(4))
    with pytest.raises(CodecError, match="weighting"):
        KMeansCodec(4, 2, weighting="diag2")


