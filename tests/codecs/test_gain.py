import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from pvq.codecs import CodecError
from pvq.codecs.gain import (
    GainQuantizer,
    beta_law,
    beta_quantile_levels,
    gain_encode_reference,
    lloyd_max_gain_levels,
)
from pvq.codecs.scalar import lloyd_max_reference


def group_amplitudes(dim, group_size, groups, seed=0):
    """Amplitudes a_i = |r_i| / group norm of simulated (rotated) Gaussian groups: [groups * G]."""
    x = torch.randn(groups, group_size, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    r = x.norm(dim=2)
    return (r / r.norm(dim=1, keepdim=True)).reshape(-1)


def test_beta_law_parameters_and_simulation():
    law = beta_law(8, 16)
    a, b = law.args
    assert (a, b) == (4.0, 60.0)
    u = group_amplitudes(8, 16, 2000).pow(2).numpy()
    assert stats.kstest(u, law.cdf).pvalue > 1e-3
    # a wrong law (e.g. Beta(D/2, D G/2)) is rejected on the same sample
    assert stats.kstest(u, stats.beta(4.0, 64.0).cdf).pvalue < 1e-3
    with pytest.raises(CodecError, match="group_size >= 2"):
        beta_law(8, 1)


def test_beta_quantile_levels_anchor():
    lv = beta_quantile_levels(8, 16, 4)
    assert lv.shape == (16,)
    np.testing.assert_allclose(lv[:3], [0.01885, 0.02733, 0.03315], atol=6e-6)
    np.testing.assert_allclose(lv[-3:], [0.09216, 0.10448, 0.12838], atol=6e-6)


def _amplitude_pdf(dim, group_size):
    a_, b_ = dim / 2, dim * (group_size - 1) / 2
    log_norm = -special.betaln(a_, b_)

    def pdf(t):
        if t <= 0 or t >= 1:
            return 0.0
        u = t * t
        return 2 * t * math.exp(log_norm + (a_ - 1) * math.log(u) + (b_ - 1) * math.log1p(-u))

    return pdf


def test_lloyd_max_amplitude_matches_quadrature_reference():
    fast = lloyd_max_gain_levels(8, 16, 2, "amplitude")
    init = np.sqrt(beta_quantile_levels(8, 16, 2))
    ref = lloyd_max_reference(_amplitude_pdf(8, 16), (0.0, 1.0), init, iters=90)
    np.testing.assert_allclose(fast, ref.levels, atol=1e-6)


def test_lloyd_max_energy_domain_is_centroid_of_beta():
    lv = lloyd_max_gain_levels(8, 16, 3, "energy")
    law = beta_law(8, 16)
    th = np.concatenate([[0.0], 0.5 * (lv[1:] + lv[:-1]), [1.0]])
    for i, level in enumerate(lv):  # centroid condition, by scipy's own expectation
        p = law.cdf(th[i + 1]) - law.cdf(th[i])
        mean = law.expect(lambda t: t, lb=th[i], ub=th[i + 1]) / p
        assert abs(mean - level) < 1e-7


def _mse(q, a):
    return float((q.decode(q.encode(a)).double() - a).pow(2).mean())


@pytest.mark.parametrize("dim,group_size,bits", [(8, 16, 4), (8, 16, 2), (32, 8, 3), (4, 64, 5)])
def test_lloyd_max_gain_beats_quantile_gain(dim, group_size, bits):
    a = group_amplitudes(dim, group_size, 20000 // group_size + 50, seed=dim + bits)
    lm = GainQuantizer.lloyd_max(dim, group_size, bits)
    qt = GainQuantizer.beta_quantile(dim, group_size, bits)
    energy = GainQuantizer(np.sqrt(lloyd_max_gain_levels(dim, group_size, bits, "energy")))
    assert _mse(lm, a) < _mse(qt, a)
    assert _mse(lm, a) < _mse(energy, a)


def test_gain_quantizer_encode_matches_reference():
    q = GainQuantizer.lloyd_max(8, 16, 3)
    assert q.num_levels == 8 and q.bits == 3
    a = torch.rand(101, generator=torch.Generator().manual_seed(1)) * 0.7
    a = torch.cat([a, q.levels.float(), torch.tensor([0.0, 1.0, -0.1, 5.0])])
    assert torch.equal(q.encode(a), gain_encode_reference(a, q.levels))
    # each level codes to itself
    assert torch.equal(q.decode(q.encode(q.levels)), q.levels.float())
    np.testing.assert_allclose(GainQuantizer.beta_quantile(8, 16, 4).levels.numpy(),
                               np.sqrt(beta_quantile_levels(8, 16, 4)))


def test_gain_quantizer_validation():
    assert GainQuantizer(torch.tensor([0.1, 0.2, 0.3])).bits == 2
    with pytest.raises(CodecError):
        GainQuantizer(torch.tensor([0.3, 0.2]))
    with pytest.raises(CodecError):
        GainQuantizer(torch.tensor([]))
    with pytest.raises(CodecError):
        lloyd_max_gain_levels(8, 16, 3, domain="log")
    with pytest.raises(CodecError):
        beta_quantile_levels(8, 16, 0)


def test_large_gain_tables_are_fast_and_ordered():
    lv = lloyd_max_gain_levels(32, 64, 12)
    assert lv.shape == (4096,) and np.all(np.diff(lv) > 0) and 0 < lv[0] and lv[-1] < 1
