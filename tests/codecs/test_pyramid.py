import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pvq.codecs import CodecError, make_codec, quantize_grouped
from pvq.codecs import bigint
from pvq.codecs.pyramid import (
    PyramidCodec,
    max_pulses_for_bits,
    pulses_for_rate,
    pyramid_count,
    pyramid_cosine,
    pyramid_rank,
    pyramid_rank_reference,
    pyramid_search_greedy,
    pyramid_search_refine,
    pyramid_unrank,
    pyramid_unrank_reference,
)

ANCHOR_COUNTS = {
    3: [1, 6, 18, 38, 66, 102, 146, 198, 258, 326],
    4: [1, 8, 32, 88, 192, 360, 608, 952, 1408, 1992],
    5: [1, 10, 50, 170, 450, 1002, 1970, 3530, 5890, 9290],
    8: [1, 16, 128, 688, 2816, 9424, 27008, 68464, 157184, 332688],
    9: [1, 18, 162, 978, 4482, 16722, 53154, 148626, 374274, 864146],
}


def brute_points(dim, pulses):
    return [list(y) for y in itertools.product(range(-pulses, pulses + 1), repeat=dim)
            if sum(map(abs, y)) == pulses]


@pytest.mark.parametrize("dim", sorted(ANCHOR_COUNTS))
def test_counts_match_anchor_table(dim):
    assert [pyramid_count(dim, k) for k in range(10)] == ANCHOR_COUNTS[dim]


def test_counts_closed_forms_and_brute_force():
    for k in range(0, 12):
        assert pyramid_count(2, k) == (4 * k if k else 1)
        assert pyramid_count(3, k) == (4 * k * k + 2 if k else 1)
    for dim in range(1, 5):
        for k in range(0, 6):
            assert pyramid_count(dim, k) == len(brute_points(dim, k))


def test_max_pulses_anchor():
    got = [max_pulses_for_bits(d, b * d) for d, b in [(8, 2), (8, 3), (32, 2), (32, 3), (128, 2), (128, 3)]]
    assert got == [6, 16, 22, 50, 84, 187]
    assert pyramid_count(128, 187).bit_length() == 384  # a 384-bit index


@pytest.mark.parametrize("dim,pulses", [(d, k) for d in range(1, 5) for k in range(0, 6)] + [(6, 3), (2, 9)])
def test_rank_unrank_exhaustive_bijection(dim, pulses):
    points = brute_points(dim, pulses)
    ranks = [pyramid_rank_reference(y, pulses) for y in points]
    assert sorted(ranks) == list(range(pyramid_count(dim, pulses)))
    for y, r in zip(points, ranks):
        assert pyramid_unrank_reference(r, dim, pulses) == y
    if points:  # vectorized paths agree bit for bit
        fast = pyramid_rank(torch.tensor(points), pulses)
        assert bigint.to_ints(fast) == ranks
        assert pyramid_unrank(fast, dim, pulses).tolist() == points


@pytest.mark.parametrize("dim,pulses", [(13, 7), (32, 22), (37, 50), (128, 187), (256, 200), (256, 1), (7, 1000)])
def test_vectorized_matches_reference_large(dim, pulses):
    gen = torch.Generator().manual_seed(dim * 1000 + pulses)
    y = pyramid_search_greedy(torch.randn(23, dim, generator=gen), pulses)
    ref = [pyramid_rank_reference(row, pulses) for row in y.tolist()]
    fast = pyramid_rank(y, pulses)
    assert bigint.to_ints(fast) == ref
    assert pyramid_unrank(fast, dim, pulses).tolist() == y.tolist()
    # extremes of the index range decode to valid points and re-rank exactly
    total = pyramid_count(dim, pulses)
    for idx in [0, 1, total // 3, total - 2, total - 1]:
        pt = pyramid_unrank_reference(idx, dim, pulses)
        assert pyramid_rank_reference(pt, pulses) == idx
        limbs = bigint.from_ints([idx], fast.shape[1])
        assert pyramid_unrank(limbs, dim, pulses).tolist() == [pt]


@settings(max_examples=40, deadline=None)
@given(dim=st.integers(1, 256), pulses=st.integers(1, 300), data=st.data())
def test_random_round_trip_property(dim, pulses, data):
    total = pyramid_count(dim, pulses)
    idx = data.draw(st.integers(0, total - 1))
    point = pyramid_unrank_reference(idx, dim, pulses)
    assert sum(map(abs, point)) == pulses
    assert pyramid_rank_reference(point, pulses) == idx
    limbs = pyramid_rank(torch.tensor([point]), pulses)
    assert bigint.to_ints(limbs) == [idx]
    assert pyramid_unrank(limbs, dim, pulses).tolist() == [point]


def test_search_lands_on_pyramid_and_refine_never_worse():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 16, generator=gen)
    x[0] = 0.0  # zero vector is handled
    for k in [1, 3, 9, 40]:
        g = pyramid_search_greedy(x, k)
        r = pyramid_search_refine(x, k)
        assert bool((g.abs().sum(1) == k).all()) and bool((r.abs().sum(1) == k).all())
        assert bool((pyramid_cosine(x, r) >= pyramid_cosine(x, g) - 1e-12).all())
    # greedy is not always the best point: refine finds better ones on some rows
    assert bool((pyramid_cosine(x, pyramid_search_refine(x, 9)) > pyramid_cosine(x, pyramid_search_greedy(x, 9)) + 1e-9).any())


def test_search_is_optimal_for_small_exhaustive_case():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40, 3, generator=gen)
    pts = torch.tensor(brute_points(3, 4), dtype=torch.float64)
    best = (x.double() @ pts.T / pts.norm(dim=1)).max(1).values / x.double().norm(dim=1)
    got = pyramid_cosine(x, pyramid_search_refine(x, 4))
    assert torch.allclose(got, best, atol=1e-12)


def test_codec_pack_unpack_round_trip_and_rate():
    gen = torch.Generator().manual_seed(3)
    for dim, bits in [(8, 2.0), (32, 3.0), (128, 2.0)]:
        codec = make_codec("pvq", bits, dim)
        x = torch.randn(64, dim, generator=gen)
        res = quantize_grouped(codec, x)
        unpacked = codec.unpack({"codes": res.stored.tensors["codes"]}, len(x))
        assert torch.equal(unpacked["index"], res.codes["index"])
        assert torch.equal(unpacked["gain"], res.codes["gain"])
        assert res.stored.bits_per_weight() <= bits + 1e-9
        assert abs(res.stored.bits_per_weight() - codec.nominal_bits_per_weight()) < 1e-9
        scale = res.stored.tensors["scale"].float().repeat_interleave(codec.group_size)
        assert torch.equal(codec.decode(unpacked, scale), res.xhat)
        assert torch.equal(codec.quantize(x, scale), res.xhat)


def test_gaussian_2bit_mse_targets():
    """i.i.d. Gaussian, 2 bpw measured from bytes: D=32 <= 0.108, and better as D grows."""
    gen = torch.Generator().manual_seed(2024)
    mses = {}
    for dim in (8, 16, 32, 64, 128):
        x = torch.randn(2**17 // dim, dim, generator=gen)
        codec = make_codec("pvq", 2.0, dim)
        res = quantize_grouped(codec, x)
        assert res.stored.bits_per_weight() <= 2.0
        mses[dim] = float((res.xhat - x).pow(2).mean())
    assert mses[32] <= 0.108
    assert mses[8] > mses[16] > mses[32] > mses[64]
    assert mses[128] <= 0.101  # D=64 and 128 are both about 0.100, within sampling noise


def test_hessian_gain_beats_plain_gain_under_hessian_metric():
    gen = torch.Generator().manual_seed(5)
    dim = 16
    a = torch.randn(dim, dim, generator=gen)
    h = a @ a.T / dim + 0.1 * torch.eye(dim)
    codec = PyramidCodec(dim, 8, group_size=4, gain_bits=6)
    x = torch.randn(256, dim, generator=gen)
    scale = codec.group_scales(x.view(-1, 4, dim)).repeat_interleave(4)
    plain = codec.decode(codec.encode(x, scale), scale)
    hess = codec.decode(codec.encode_hessian(x, scale, h), scale)

    def loss(q):
        e = (x - q).double()
        return float(((e @ h.double()) * e).sum())

    assert loss(hess) < loss(plain)


@pytest.mark.parametrize(
    "call",
    [
        lambda: pyramid_count(0, 3),
        lambda: pyramid_count(4, -1),
        lambda: PyramidCodec(8, 0),
        lambda: PyramidCodec(8, 4, group_size=1),
        lambda: PyramidCodec(8, 4, search="exhaustive"),
        lambda: make_codec("pvq", 0.1, 8),
        lambda: make_codec("pvq", -1.0, 8),
        lambda: make_codec("pvq", float("nan"), 8),
        lambda: pyramid_rank_reference([1, 1], 3),
        lambda: pyramid_unrank_reference(pyramid_count(4, 3), 4, 3),
        lambda: pyramid_unrank(bigint.from_ints([pyramid_count(5, 4)], 2), 5, 4),
        lambda: quantize_grouped(make_codec("pvq", 2.0, 8), torch.full((16, 8), float("nan"))),
        lambda: quantize_grouped(make_codec("pvq", 2.0, 8), torch.randn(15, 8)),
    ],
)
def test_bad_arguments_raise_clear_errors(call):
    with pytest.raises(CodecError) as err:
        call()
    assert len(str(err.value)) > 20


def test_rate_error_says_what_to_change():
    with pytest.raises(CodecError, match="raise the rate"):
        pulses_for_rate(0.2, 8, 16, 4)


def test_encode_decode_matches_decode_bit_for_bit():
    gen = torch.Generator().manual_seed(9)
    for dim, bits in [(8, 3.0), (24, 3.0), (32, 4.0)]:
        codec = make_codec("pvq", bits, dim)
        x = torch.randn(codec.group_size * 6, dim, generator=gen)
        scale = codec.group_scales(x.view(-1, codec.group_size, dim)).repeat_interleave(codec.group_size)
        h = torch.eye(dim) + 0.3 * torch.ones(dim, dim)
        for hess in (None, h):
            codes, xhat = codec.encode_decode(x, scale, hessian=hess)
            ref = codec.encode(x, scale) if hess is None else codec.encode_hessian(x, scale, hess)
            assert all(torch.equal(codes[k], ref[k]) for k in ref)
            assert torch.equal(xhat, codec.decode(codes, scale))


def test_greedy_fill_on_active_rows_equals_the_plain_loop():
    """The fill that works on the prefix of rows still short of K gives the plain loop's points bit for bit."""
    from pvq.codecs.pyramid import _greedy_fill, _greedy_fill_reference

    gen = torch.Generator().manual_seed(11)
    for n, dim, k in [(1, 5, 7), (300, 24, 70), (257, 8, 200), (64, 13, 1), (100, 32, 3)]:
        x = torch.randn(n, dim, generator=gen) * torch.rand(n, 1, generator=gen)
        ax = x.abs().double()
        y0 = torch.floor(ax * (k / ax.sum(1, keepdim=True))).long()
        y0[::7] = 0  # rows with all K pulses left
        a, b = _greedy_fill(ax, y0.clone(), k), _greedy_fill_reference(ax, y0.clone(), k)
        assert torch.equal(a, b) and bool((a.sum(1) == k).all())
