"""The split index order of the pyramid: a bijection onto [0, N(D, K)), references against tensors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pvq.codecs.base import CodecError
from pvq.codecs.pyramid import PyramidCodec, pvq_from_rate, pyramid_count, pyramid_search_greedy
from pvq.codecs.pyramid_split import (
    leaf_points,
    split_rank,
    split_rank_reference,
    split_supported,
    split_unrank,
    split_unrank_reference,
)
from pvq.codecs.pyramid_counts import pyramid_unrank_reference


@pytest.mark.parametrize("dim,pulses", [(4, 1), (4, 5), (8, 1), (8, 4), (16, 1), (16, 3), (32, 2)])
def test_exhaustive_bijection(dim, pulses):
    n = pyramid_count(dim, pulses)
    points = [split_unrank_reference(i, dim, pulses) for i in range(n)]
    assert len({tuple(p) for p in points}) == n
    assert all(sum(abs(v) for v in p) == pulses for p in points)
    assert [split_rank_reference(p, pulses) for p in points] == list(range(n))
    y = split_unrank(torch.arange(n), dim, pulses)
    assert torch.equal(y, torch.tensor(points))
    assert torch.equal(split_rank(y, pulses), torch.arange(n))


def test_first_half_pulses_are_ordered():
    # points whose first half holds fewer pulses come first
    y = split_unrank(torch.arange(pyramid_count(8, 3)), 8, 3)
    first = y[:, :4].abs().sum(1)
    assert bool((first[1:] >= first[:-1]).all())


@settings(max_examples=40, deadline=None)
@given(dim=st.sampled_from([8, 16, 32]), pulses=st.integers(1, 40), seed=st.integers(0, 2**31 - 1))
def test_large_round_trip_matches_reference(dim, pulses, seed):
    if not split_supported(dim, pulses):
        with pytest.raises(CodecError, match="split"):
            split_rank(torch.zeros(1, dim, dtype=torch.int64), pulses)
        return
    gen = torch.Generator().manual_seed(seed)
    y = pyramid_search_greedy(torch.randn(6, dim, generator=gen), pulses)
    r = split_rank(y, pulses)
    assert [split_rank_reference(p, pulses) for p in y.tolist()] == r.tolist()
    assert bool((r >= 0).all()) and bool((r < pyramid_count(dim, pulses)).all())
    assert torch.equal(split_unrank(r, dim, pulses), y)


def test_leaf_table_is_fischer_order():
    pts, off = leaf_points(6)
    for k in range(7):
        block = pts[off[k]:off[k + 1]].tolist()
        assert block == [pyramid_unrank_reference(i, 4, k) for i in range(pyramid_count(4, k))]


def test_supported_dimensions():
    assert split_supported(8, 11) and split_supported(16, 23) and split_supported(32, 20)
    assert not split_supported(6, 3) and not split_supported(12, 3) and not split_supported(2, 3)
    assert not split_supported(32, 44)  # N(32, 44) > 2^62
    assert not split_supported(16, 53)  # N(16, 53) < 2^62, but the cumulative A(16, 53) needs 64 bits


def test_every_supported_split_order_has_int64_tables():
    """Where the split order is supported, the vectorized rank's int64 tables hold every count (session 11:
    D = 16, K = 53, chosen by pvq at 4.25 bits, overflowed them), and the rank runs there."""
    from pvq.codecs.pyramid_counts import _cumulative_table
    from pvq.codecs.pyramid_split import split_offsets

    for dim in (4, 8, 16, 32):
        for k in range(1, 90):
            if not split_supported(dim, k):
                continue
            assert _cumulative_table(dim, k)[dim][k] < 1 << 63
            n = dim
            while n > 4:
                assert max(max(r) for r in split_offsets(n, k)) < 1 << 63
                n //= 2
    codec = pvq_from_rate(4.25, 16)  # K = 53: the Fischer order, which encodes
    assert codec.index_order == "fischer"
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
    codec.encode(x, torch.ones(32))


@pytest.mark.parametrize("dim,bits", [(8, 3), (16, 2)])
def test_codec_split_order_same_points_and_bits(dim, bits):
    fischer = pvq_from_rate(bits, dim, index_order="fischer")
    split = pvq_from_rate(bits, dim)  # auto: split where supported
    assert split.index_order == "split" and split.code_bits == fischer.code_bits
    x = torch.randn(64 * 16, dim, generator=torch.Generator().manual_seed(1))
    scale = torch.full((x.shape[0],), float(x.norm(dim=1).mean()) * 4)
    cf, cs = fischer.encode(x, scale), split.encode(x, scale)
    assert torch.equal(cf["gain"], cs["gain"])
    assert not torch.equal(cf["index"], cs["index"])  # another numbering...
    assert torch.equal(fischer.decode(cf, scale), split.decode(cs, scale))  # ...of the same points
    n = x.shape[0]
    assert torch.equal(split.decode(split.unpack(split.pack(cs), n), scale), split.decode(cs, scale))
    assert split.pack(cs)["codes"].numel() == fischer.pack(cf)["codes"].numel()


def test_split_order_refused_where_undefined():
    with pytest.raises(CodecError, match="index_order='fischer'"):
        PyramidCodec(12, 4, index_order="split")
    with pytest.raises(CodecError, match="index_order must be"):
        PyramidCodec(8, 4, index_order="zigzag")
    assert pvq_from_rate(3, 32).index_order == "fischer"  # N(32, 44) needs more than 62 bits


def test_decode_points_follow_the_index_order():
    # the integer-product path reads points through decode_points: same points in either order
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(5))
    scale = torch.full((64,), 8.0)
    fischer, split = pvq_from_rate(3, 8, index_order="fischer"), pvq_from_rate(3, 8, index_order="split")
    yf, mf = fischer.decode_points(fischer.encode(x, scale), scale)
    ys, ms = split.decode_points(split.encode(x, scale), scale)
    assert torch.equal(yf, ys) and torch.equal(mf, ms)
