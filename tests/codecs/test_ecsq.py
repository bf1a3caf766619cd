"""The entropy-coded scalar quantizer: exact stream round trips, ECR against its reference,
the coded rate on a Gaussian source, the per-layer rate target through the solver."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pvq.codecs import make_codec, quantize_grouped
from pvq.codecs.ecsq import EcsqCodec, ecr_round, ecr_round_reference
from pvq.codecs.entropy import CodedStreamError, entropy_bits
from pvq.errors import CodecError
from pvq.solvers import SolverConfig, quantize_linear


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 300), lam=st.sampled_from([0.0, 0.05, 0.1155, 0.4]), dz=st.sampled_from([0.0, 0.3]),
       seed=st.integers(0, 2**31))
def test_ecr_round_matches_reference(n, lam, dz, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, generator=g, dtype=torch.float64) * 3
    lens = (torch.rand(9, generator=g, dtype=torch.float64) * 8).round()  # exact small floats
    got = ecr_round(u, lens, -4, lam, dz).tolist()
    assert got == ecr_round_reference(u.tolist(), lens.tolist(), -4, lam, dz)


@settings(max_examples=15, deadline=None)
@given(groups=st.integers(1, 7), gw=st.sampled_from([3, 8, 40]), bits=st.sampled_from([1.5, 2.0, 3.3]),
       seed=st.integers(0, 2**31))
def test_stream_decodes_bit_exactly_to_the_codes(groups, gw, bits, seed):
    x = torch.randn(groups * gw, 1, generator=torch.Generator().manual_seed(seed))
    codec = make_codec("ecsq", bits, 1, group_weights=gw)
    res = quantize_grouped(codec, x)
    n = x.shape[0]
    back = res.codec.unpack(res.stored.tensors, n)
    assert torch.equal(back["q"], res.codes["q"])
    scales = res.stored.tensors["scale"].float().repeat_interleave(res.codec.group_size)
    assert torch.equal(res.codec.decode(back, scales), res.xhat)
    again = EcsqCodec(**res.codec.config())  # as a checkpoint rebuilds it: no encoder model needed
    assert torch.equal(again.unpack(res.stored.tensors, n)["q"], res.codes["q"])


def test_gaussian_coded_rate_and_gap_to_the_rate_distortion_bound():
    x = torch.randn(1 << 18, 1, generator=torch.Generator().manual_seed(0))
    res = quantize_grouped(make_codec("ecsq", 4.0, 1, group_weights=1 << 18), x)
    n = x.numel()
    stream_bits = 8 * res.stored.tensors["stream"].numel()
    h = entropy_bits(res.codes["q"].numpy())
    assert h <= stream_bits <= 1.02 * h  # coded rate within 2% of the symbol entropy
    rate = res.stored.bits_per_weight()
    assert abs(rate - 4.0) < 0.02
    gap = 10 * math.log10(float((res.xhat - x).pow(2).mean()) / 2 ** (-2 * rate))
    assert abs(gap - 1.53) < 0.1, gap  # 10 log10(pi e / 6) at high rate


def test_lagrangian_trades_rate_for_distortion():
    x = torch.randn(1 << 15, 1, generator=torch.Generator().manual_seed(3))
    plain = quantize_grouped(EcsqCodec(3.0, 1, 1 << 15, delta=0.3, ecr_lambda=0.0), x)
    ecr = quantize_grouped(EcsqCodec(3.0, 1, 1 << 15, delta=0.3, ecr_lambda=0.3), x)
    mse = [float((r.xhat - x).pow(2).mean()) for r in (plain, ecr)]
    rate = [r.stored.bits_per_weight() for r in (plain, ecr)]
    assert rate[1] < rate[0] - 0.02 and mse[1] > mse[0]


def test_solver_meets_the_coded_rate_per_layer():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(48, 128, generator=g)
    a = torch.randn(512, 128, generator=g) * torch.linspace(0.2, 2.0, 128)
    h = a.T @ a / 512
    for bits in (2.0, 3.0):
        res = quantize_linear(w, h, make_codec("ecsq", bits, 1, group_weights=128), None, SolverConfig())
        rate = sum(t.numel() * t.element_size() * 8 for t in res.stored.values()) / w.numel()
        assert bits - 0.03 <= rate <= bits + 1e-9, (bits, rate)
        assert res.codec.delta is not None
        back = EcsqCodec(**res.codec.config())
        q = back.decode(back.unpack(res.stored, w.numel()), res.stored["scale"].float().repeat_interleave(128))
        assert torch.equal(q.reshape(w.shape), res.rotated_weight)


def test_corrupt_stream_is_refused():
    res = quantize_grouped(make_codec("ecsq", 3.0, 1, group_weights=64), torch.randn(4096, 1))
    stream = res.stored.tensors["stream"].clone()
    stream[stream.numel() // 2] ^= 1
    with pytest.raises(CodedStreamError, match="corrupt"):
        res.codec.unpack({**res.stored.tensors, "stream": stream}, 4096)
    with pytest.raises(CodedStreamError, match="truncated"):
        res.codec.unpack({**res.stored.tensors, "stream": res.stored.tensors["stream"][:-3]}, 4096)
    with pytest.raises(CodedStreamError, match="expected"):
        res.codec.unpack(res.stored.tensors, 4095)


@pytest.mark.parametrize("kwargs", [dict(bits=0), dict(bits=2, delta=-1.0), dict(bits=2, ecr_lambda=-1.0),
                                    dict(bits=2, group_weights=3, dim=2), dict(bits=2, dead_zone=9.0)])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(CodecError):
        EcsqCodec(**kwargs)
