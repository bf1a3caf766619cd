"""Codecs ``aqlm`` (additive codebooks, beam search) and ``gptvq`` (8-bit K-means codebook)."""

import itertools

import pytest
import torch

from pvq.codecs import make_codec, quantize_grouped
from pvq.codecs.aqlm import AQLMCodec, beam_search
from pvq.codecs.gptvq import GPTVQCodec, round_codebook
from pvq.errors import CodecError


def exhaustive(u, books, metric):
    """Best code pair of every vector by trying all K^M combinations (the plain reference)."""
    m_books, k, d = books.shape
    best = torch.full((u.shape[0],), float("inf"), dtype=torch.float64)
    arg = torch.zeros(u.shape[0], m_books, dtype=torch.int64)
    for combo in itertools.product(range(k), repeat=m_books):
        e = (u - sum(books[m, c] for m, c in enumerate(combo))).double()
        dist = ((e @ metric.double()) * e).sum(1)
        better = dist < best
        best = torch.where(better, dist, best)
        arg[better] = torch.tensor(combo)
    return arg, best


def dist_of(u, books, codes, metric):
    e = (u - sum(books[m][codes[:, m]] for m in range(books.shape[0]))).double()
    return ((e @ metric.double()) * e).sum(1)


@pytest.mark.parametrize("d,k,seed", [(3, 8, 0), (5, 6, 1), (2, 16, 2)])
def test_beam_search_with_full_beam_is_exhaustive(d, k, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(97, d, generator=g)
    books = torch.randn(2, k, d, generator=g) * torch.tensor([1.0, 0.4]).reshape(2, 1, 1)
    a = torch.randn(d, d, generator=g)
    metric = a @ a.T + 0.1 * torch.eye(d)
    for mt in (torch.eye(d), metric):
        _, want = exhaustive(u, books, mt)
        got = beam_search(u, books, mt, beam=k, chunk=13)  # chunks of awkward size
        torch.testing.assert_close(dist_of(u, books, got, mt), want, rtol=1e-5, atol=1e-6)
        narrow = beam_search(u, books, mt, beam=1)  # greedy + coordinate descent: never better than the optimum
        assert (dist_of(u, books, narrow, mt) >= want - 1e-6).all()


def test_aqlm_round_trip_and_counted_rate():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4096, 8, generator=g)
    codec = make_codec("aqlm", 2, 8, group_weights=64)
    assert (codec.num_codebooks, codec.codebook_bits) == (2, 8)
    res = quantize_grouped(codec, x)
    stored = res.stored.tensors
    assert set(stored) == {"index", "codebooks", "scale"} and stored["codebooks"].dtype == torch.float16
    back = res.codec.with_data(stored)
    codes = back.unpack(stored, x.shape[0])
    assert torch.equal(codes["index"], res.codes["index"])
    s = stored["scale"].float().repeat_interleave(codec.group_size)
    assert torch.equal(back.decode(codes, s), res.xhat)
    # 2 bits of codes + fp16 scale per 64 weights + the 2 x 256 x 8 fp16 codebooks
    assert res.stored.bits_per_weight() == pytest.approx(2 + 16 / 64 + 2 * 256 * 8 * 16 / x.numel())
    snr = 10 * torch.log10(x.pow(2).mean() / (res.xhat - x).pow(2).mean())
    assert snr > 7.0  # 2x8 on a Gaussian source: about 8.5 dB at this size


def test_aqlm_settings_and_bad_input():
    assert make_codec("aqlm", 2, 8, codebook_bits=16).num_codebooks == 1  # the 1x16 setting
    assert make_codec("aqlm", 3, 8).num_codebooks == 3
    with pytest.raises(CodecError, match="gives no codebook"):
        make_codec("aqlm", 1, 4, codebook_bits=16)
    with pytest.raises(CodecError, match="codebooks must have shape"):
        AQLMCodec(2, 4, 8, codebooks=torch.zeros(2, 15, 8))


def test_gptvq_codebook_is_stored_in_8_bits_and_counted():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2048, 2, generator=g)
    codec = make_codec("gptvq", 3, 2, group_weights=128)
    res = quantize_grouped(codec, x)
    t = res.stored.tensors
    assert t["codebook"].dtype == torch.int8 and t["codebook"].shape == (64, 2)
    assert t["codebook_scale"].dtype == torch.float16
    back = res.codec.with_data(t)
    assert torch.equal(back.codebook, res.codec.codebook)
    s = t["scale"].float().repeat_interleave(codec.group_size)
    assert torch.equal(back.decode(back.unpack(t, 2048), s), res.xhat)
    assert res.stored.bits_per_weight() == pytest.approx(3 + 16 / 128 + (64 * 2 * 8 + 16) / x.numel())
    fp16 = quantize_grouped(make_codec("gptvq", 3, 2, group_weights=128, codebook_precision=16), x)
    assert fp16.stored.tensors["codebook"].dtype == torch.float16


def test_round_codebook_8_bits_is_exact_on_its_grid():
    c = torch.tensor([[0.5, -1.27], [0.0, 0.01]])
    q, s, values = round_codebook(c, 8)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    assert torch.equal(round_codebook(values, 8)[2], values)  # idempotent
    assert GPTVQCodec(1, 2, 2, codebook=c).codebook.equal(values)


def test_vptq_main_and_residual_codebooks_round_trip():
    from pvq.codecs.vptq import VPTQCodec

    g = torch.Generator().manual_seed(6)
    x = torch.randn(3072, 6, generator=g)
    codec = make_codec("vptq", 2, 6, group_weights=96)
    assert (codec.index_bits, codec.residual_bits) == (9, 3)
    res = quantize_grouped(codec, x)
    t = res.stored.tensors
    assert set(t) == {"index", "residual", "codebook", "residual_codebook", "scale"}
    back = res.codec.with_data(t)
    s = t["scale"].float().repeat_interleave(codec.group_size)
    assert torch.equal(back.decode(back.unpack(t, x.shape[0]), s), res.xhat)
    assert res.stored.bits_per_weight() == pytest.approx(2 + 16 / 96 + (512 + 8) * 6 * 16 / x.numel())
    plain = quantize_grouped(VPTQCodec(9, 0, 6, group_weights=96), x)  # the residual stage lowers the error
    assert (res.xhat - x).pow(2).mean() < 0.9 * (plain.xhat - x).pow(2).mean()
    with pytest.raises(CodecError, match="main codebook"):
        make_codec("vptq", 4, 8, residual_bits=1)
