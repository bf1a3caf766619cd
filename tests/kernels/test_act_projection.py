"""The Triton activation projection (pvq.kernels.triton_act: on the GPU where there is one, else under
the interpreter): bit for bit the reference (PyramidActivationQuantizer.quantize, on the CPU) on awkward
inputs, batch independent, and wired into the integer backends."""

import math

import pytest
import torch

import pvq.kernels.act_projection as act_projection
from pvq.codecs.activation import ActPoints, PyramidActivationQuantizer, RtnActivationQuantizer
from pvq.codecs.pyramid_search import _greedy_fill
from pvq.errors import QuantizeError
from pvq.kernels.act_projection import act_projection_triton, act_projector
from pvq.kernels import triton_act
from pvq.kernels.triton_act import act_project

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def kernel_points(q, x: torch.Tensor) -> ActPoints:
    """``q``'s points of CPU rows ``x`` through the kernel on DEVICE, back on the CPU."""
    a = act_projection_triton(q, x.to(DEVICE))
    return ActPoints(a.points.cpu(), a.gains.cpu())


def _bits(g: torch.Tensor) -> torch.Tensor:
    return g.contiguous().view(torch.int32)


def assert_same(got, want):
    assert got.points.dtype == want.points.dtype and got.gains.dtype == want.gains.dtype == torch.float32
    bad = (got.points != want.points).any(1).nonzero().flatten().tolist()
    assert not bad, f"points differ in rows {bad}"
    bad = (_bits(got.gains) != _bits(want.gains)).any(1).nonzero().flatten().tolist()
    assert not bad, f"gains differ in rows {bad}: {got.gains[bad[:2]]} vs {want.gains[bad[:2]]}"


def awkward_rows(n: int, d: int, k: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Rows ``[29, n]`` of Gaussians at many scales plus zero vectors, -0.0, ties (small integers,
    +-1), rows whose floor already holds K pulses, spikes, huge and tiny magnitudes."""
    g = torch.Generator().manual_seed(seed)
    j = n // d
    rows = [torch.randn(n, generator=g, dtype=torch.float64) * 10.0 ** (6 * torch.rand(1, generator=g).item() - 3)
            for _ in range(12)]
    half = torch.randn(n, generator=g, dtype=torch.float64)
    half.view(j, d)[::2] = 0
    rows += [torch.zeros(n, dtype=torch.float64), half, -torch.zeros(n, dtype=torch.float64)]
    rows += [torch.randint(-2, 3, (n,), generator=g).double(), torch.randint(0, 2, (n,), generator=g).double() * 2 - 1,
             torch.full((n,), 0.75, dtype=torch.float64)]
    exact = torch.zeros(j, d, dtype=torch.float64)  # integer points with K pulses, scaled by a power of two
    for v in range(j):
        exact[v].index_add_(0, torch.randint(0, d, (k,), generator=g), torch.ones(k, dtype=torch.float64))
    sign = torch.randint(0, 2, (j, d), generator=g).double() * 2 - 1
    rows += [(exact * sign).reshape(n) * 0.125, (exact * sign).reshape(n) * 3.0]
    spike = torch.zeros(j, d, dtype=torch.float64)
    spike[torch.arange(j), torch.randint(0, d, (j,), generator=g)] = -2.5
    rows.append(spike.reshape(n))
    near = torch.randn(n, generator=g, dtype=torch.float64)
    near.view(j, d)[:, d // 2] = -near.view(j, d)[:, 0]  # equal magnitudes on two coordinates
    rows.append(near)
    for scale in (1e30, 1e36, 1e-30, 1e-38, 1e-42):
        rows.append(torch.randn(n, generator=g, dtype=torch.float64) * scale)
    rows.append(torch.randn(n, generator=g, dtype=torch.float64).clamp(-0.01, 0.01) * 1e-3)
    return torch.stack(rows).to(dtype)


def crafted_gain_rows(q: PyramidActivationQuantizer) -> torch.Tensor:
    """float64 tokens ``[r, in]`` that pin quantized gains (a spike ``c e_0`` and a spike ``s e_0`` with
    ``c^2 + s^2 = S^2``, S an fp16 number: token norm S, amplitude c, multiplier ``level S / K``):
    amplitudes just beside a threshold whose float32 rounding falls on its other side (the reference
    rounds the amplitude to float32 before the search), and (level, S) where ``(level S) / K`` and
    ``level (S / K)`` round to different float32 numbers."""
    gain = q.codec.gain
    pairs = []  # (c, S)
    for t in gain.thresholds.tolist():
        t32 = float(torch.tensor(t, dtype=torch.float32))
        if t32 != t:
            pairs.append((t + 2.0**-40 if t32 < t else t - 2.0**-40, 1.0))
    level = gain.levels.float().double()
    s = torch.arange(15360, 16384, dtype=torch.int16).view(torch.float16).double()  # fp16 numbers in [0.5, 1)
    m1 = (level[:, None] * s[None, :] / q.pulses).float()
    m2 = (level[:, None] * (s[None, :] / q.pulses)).float()
    for i, j in (m1 != m2).nonzero().tolist()[:8]:
        pairs.append((float(level[i] * s[j]), float(s[j])))
    rows = torch.zeros(len(pairs), q.in_features, dtype=torch.float64)
    for r, (c, scale) in enumerate(pairs):
        rows[r, 0], rows[r, q.dim] = c, math.sqrt(scale * scale - c * c)
    return rows


def crafted_fp16_gain_rows(q: PyramidActivationQuantizer) -> torch.Tensor:
    """float64 tokens ``[r, in]`` whose fp16 gains lie just beside a midpoint between two fp16 numbers:
    within half a float32 ulp (the reference rounds to float32, then to fp16: ties to even) and one
    float32 ulp away (a gain off by 1e-7 moves to the other fp16 number). Spikes ``c e_0``: gain c / K."""
    h = torch.arange(14336, 14436, dtype=torch.int16).view(torch.float16).double()  # fp16 numbers from 0.5
    mid = (h[:-1] + h[1:]) / 2
    gains = torch.cat([mid * (1 + e) for e in (2.0**-30, -(2.0**-30), 1.5 * 2.0**-24, -1.5 * 2.0**-24)])
    rows = torch.zeros(-(-len(gains) // q.vectors), q.in_features, dtype=torch.float64)
    rows.view(-1, q.dim)[: len(gains), 0] = gains * q.pulses
    return rows


CASES = [  # in, D, K, gain bits
    (64, 8, 11, 0),
    (96, 24, 30, 0),
    (72, 24, 9, 4),
    (48, 12, 5, 8),
    (64, 16, 1, 3),
    (128, 64, 127, 0),
    (64, 32, 40, 6),
    (32, 8, 200, 3),  # int16 points
    (12, 1, 5, 0),
    (30, 3, 7, 2),
]


@pytest.mark.parametrize("n,d,k,gain_bits", CASES)
def test_kernel_matches_the_reference_bit_for_bit(n, d, k, gain_bits):
    q = PyramidActivationQuantizer(n, d, k, gain_bits)
    for dtype, seed in ((torch.float32, 1), (torch.float64, 2)):
        x = awkward_rows(n, d, k, dtype, seed + n + d)
        if dtype == torch.float64:
            crafted = crafted_gain_rows(q) if gain_bits else crafted_fp16_gain_rows(q)
            assert gain_bits == 0 or len(crafted) > 2 ** (gain_bits - 1)  # the check can see the two roundings
            x = torch.cat([x, crafted])
        got = kernel_points(q, x)
        assert got.points.shape == (x.shape[0], n) and got.gains.shape == (x.shape[0], n // d)
        assert_same(got, q.quantize(x))


@pytest.mark.parametrize("n,d,k", [(64, 8, 13), (48, 16, 24), (32, 8, 200), (96, 24, 30)])
def test_vectors_where_the_floor_scaling_decides_the_point(n, d, k):
    """Vectors whose points differ when the floor scales by ``K / |x|_1`` instead of the reference's
    ``(1 / |x|_1) * K`` (torch's ``K / tensor``): found by search among integer vectors (their L1
    norm is exact in any order of summation), then bit for bit."""
    g = torch.Generator().manual_seed(d + k)
    m = 20000
    ax = torch.randint(0, 9, (m, d), generator=g).double() * torch.randint(1, 300, (m, 1), generator=g).double()
    ax = ax[ax.sum(1) > 0]
    l1 = ax.sum(1, keepdim=True)
    ours, other = torch.floor(ax * (1 / l1 * k)).long(), torch.floor(ax * (torch.full_like(l1, k) / l1)).long()
    apart = (ours != other).any(1)
    apart[apart.clone()] = (_greedy_fill(ax[apart], ours[apart], k) != _greedy_fill(ax[apart], other[apart], k)).any(1)
    found = ax[apart]
    assert len(found) >= 1
    x = found[torch.arange(n // d * 2) % len(found)].reshape(2, n)
    x[1] = -x[1]
    q = PyramidActivationQuantizer(n, d, k, 0)
    assert_same(kernel_points(q, x), q.quantize(x))


def test_float64_beyond_float32_range_and_a_transposed_input():
    q = PyramidActivationQuantizer(64, 16, 24, 0)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 9, generator=g, dtype=torch.float64).T * torch.tensor([1e150, 1e-150, 1e200, 1, 1, 1, 1, 1, 1],
                                                                             dtype=torch.float64)[:, None]
    assert not x.is_contiguous()
    assert_same(kernel_points(q, x), q.quantize(x))


@pytest.mark.parametrize("gain_bits", [0, 4])
def test_a_row_does_not_depend_on_the_other_rows_or_the_block(gain_bits):
    q = PyramidActivationQuantizer(48, 8, 13, gain_bits)
    x = awkward_rows(48, 8, 13, torch.float32, 7).to(DEVICE)
    tables = act_projector(q, DEVICE, interpreter=True).tables
    want = act_project(x, 8, 13, torch.int8, *tables)
    for block in (2, 64):
        assert all(torch.equal(a, b) for a, b in zip(act_project(x, 8, 13, torch.int8, *tables, block_v=block), want))
    for i in (0, 14, 27):
        for batch, row in ((x[i : i + 1], 0), (torch.cat([x[i : i + 1] * 0 + 1e30, x[i : i + 1]]), 1)):
            p, g = act_project(batch, 8, 13, torch.int8, *tables)
            assert torch.equal(p[row], want[0][i]) and torch.equal(_bits(g[row]), _bits(want[1][i]))


def test_non_finite_vectors_get_nan_gains_and_leave_the_others_alone():
    q = PyramidActivationQuantizer(32, 8, 10, 0)
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    want = q.quantize(x)
    x[1, 3], x[2, 17] = float("nan"), -float("inf")
    got = kernel_points(q, x)
    nan = torch.isnan(got.gains)
    assert nan.tolist() == [[False] * 4, [True, False, False, False], [False, False, True, False]]
    assert torch.equal(got.gains[~nan], want.gains[~nan])
    keep = ~nan.repeat_interleave(8, dim=1)
    assert torch.equal(got.points[keep], want.points[keep])


def test_the_projector_takes_the_kernel_where_it_can_and_the_reference_elsewhere():
    pvq_q = PyramidActivationQuantizer(64, 16, 20, 4)
    assert act_projector(pvq_q, "cpu").name == "reference"  # the interpreter only when asked for
    assert act_projector(pvq_q, DEVICE, interpreter=True).name == "pvq-triton"
    rtn = RtnActivationQuantizer(64, 4)
    assert act_projector(rtn, DEVICE, interpreter=True).name == "reference"
    assert act_projector(PyramidActivationQuantizer(256, 256, 8, 0), DEVICE, interpreter=True).name == "reference"
    with pytest.raises(QuantizeError, match="rtn activations are not pyramid projections"):
        act_projection_triton(rtn, torch.randn(2, 64, device=DEVICE))
    x = torch.randn(5, 64)
    assert_same(act_projector(rtn, "cpu", interpreter=True)(x), rtn.quantize(x))


def test_act_int_triton_runs_the_kernel_and_gives_the_reference_output(monkeypatch):
    from tiny_models import X, calib, quantized, tiny

    from pvq.models import ActivationQuant, QuantizeConfig, quantize_model, set_activation_quant, set_backend

    m = tiny()
    quantize_model(m, calib(4), QuantizeConfig(method="pvq", bits=4, n_samples=4, seq_len=32, act_bits=4),
                   progress=False, log=None)
    m.to(DEVICE)
    layers = quantized(m).values()
    ids = X[:, :8].to(DEVICE)
    calls = []

    def spy(x, *args, **kwargs):
        calls.append(x.shape)
        return act_project(x, *args, **kwargs)

    monkeypatch.setattr(triton_act, "act_project", spy)
    table = act_projection.ACT_KERNELS
    for gain_bits in (None, 0):  # None: the best for the rate (quantized gains here), 0: fp16 gains
        set_activation_quant(m, ActivationQuant("pvq", 4, gain_bits=gain_bits))
        assert {q.act_quantizer.gain_bits > 0 for q in layers} == {gain_bits is None}
        outputs = {}
        for kernels in (table, ()):  # (): the projection as before, the PyTorch reference
            monkeypatch.setattr(act_projection, "ACT_KERNELS", kernels)
            calls_before = len(calls)
            set_backend(m, "act-int-triton")
            with torch.no_grad():
                outputs[len(kernels)] = m(ids).logits
            assert {q.runtime_tensors()["act"].name for q in layers} == {"pvq-triton" if kernels else "reference"}
            assert (len(calls) > calls_before) == bool(kernels)
        assert torch.equal(outputs[1], outputs[0])
    assert len(calls) == 2 * len(layers)  # one launch per layer and forward, with kernels only
