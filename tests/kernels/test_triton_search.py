"""The Triton greedy fill of the PVQ weight search against the PyTorch loop and the plain reference:
bit for bit on random rows of awkward sizes, ties, zero rows and rows already full."""

import pytest
import torch

from pvq.codecs.pyramid_search import FILL_KERNELS, _greedy_fill, _greedy_fill_reference, pyramid_search_greedy

triton_search = pytest.importorskip("pvq.kernels.triton_search", reason="Triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def start(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """|x| and the projection's floor (never above K), as pyramid_search_greedy starts."""
    ax = x.abs().double()
    y = torch.floor(ax * (k / ax.sum(1, keepdim=True).clamp(min=1e-300))).long()
    while bool((y.sum(1) > k).any()):
        over = y.sum(1) > k
        idx = torch.argmax(y * over.unsqueeze(1), dim=1)
        y[torch.arange(len(y)), idx] -= over.long()
    return ax, y


@pytest.mark.parametrize("n, d, k", [(1, 8, 11), (37, 8, 5), (130, 16, 31), (257, 32, 40), (65, 5, 9), (19, 32, 1)])
@pytest.mark.parametrize("seed", [0, 1])
def test_kernel_equals_the_loop_and_the_reference(n, d, k, seed):
    g = torch.Generator().manual_seed(seed * 1000 + n)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.rand(n, 1, generator=g, dtype=torch.float64)
    x[::7, : d // 2] = 0.0  # sparse rows
    x[1::6] = -0.5  # equal magnitudes: the pulses left after the floor tie (they go to the first coordinates)
    ax, y = start(x, k)
    y[::5] = 0  # rows with every pulse still to place
    left = k - y.sum(1)
    yd = y.double()
    xy, yy = (ax * yd).sum(1), (yd * yd).sum(1)
    want = _greedy_fill_reference(ax, y.clone(), k)
    got = triton_search.greedy_fill_triton(ax.to(DEVICE), y.to(DEVICE), xy.to(DEVICE), yy.to(DEVICE),
                                           left.to(DEVICE)).cpu()
    assert torch.equal(got, want)
    assert torch.equal(_greedy_fill(ax, y.clone(), k), want)
    assert (got.sum(1) == k).all()


def test_search_takes_the_registered_kernel_and_falls_back_when_it_fails(monkeypatch):
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    want = pyramid_search_greedy(x, 11)
    calls = []

    def through_kernel(ax, y, xy, yy, left):
        calls.append(len(y))
        return triton_search.greedy_fill_triton(ax, y, xy, yy, left)

    monkeypatch.setitem(FILL_KERNELS, "cpu", through_kernel)
    assert torch.equal(pyramid_search_greedy(x, 11), want) and calls == [50]

    def broken(*args):
        raise RuntimeError("no compiler here")

    monkeypatch.setitem(FILL_KERNELS, "cpu", broken)
    with pytest.warns(RuntimeWarning, match="greedy-fill kernel failed .*no compiler here.*PyTorch loop"):
        assert torch.equal(pyramid_search_greedy(x, 11), want)
    assert "cpu" not in FILL_KERNELS  # dropped: the loop runs from now on


def test_a_layer_solved_through_the_kernel_stores_the_same_codes(monkeypatch):
    from pvq.models import QuantizeConfig
    from pvq.solvers import HessianAccumulator, quantize_linear

    g = torch.Generator().manual_seed(5)
    cfg = QuantizeConfig(method="pvq", bits=3.0)
    codec = cfg.make_codec(32, 4)
    acc = HessianAccumulator(256)
    acc.add(torch.randn(512, 256, generator=g))
    w = torch.randn(24, 256, generator=g, dtype=torch.float64) * 0.02
    loop = quantize_linear(w, acc.hessian(), codec, None, cfg.solver_config())
    monkeypatch.setitem(FILL_KERNELS, "cpu", triton_search.greedy_fill_triton)
    fast = quantize_linear(w, acc.hessian(), codec, None, cfg.solver_config())
    assert loop.stored.keys() == fast.stored.keys()
    assert all(torch.equal(loop.stored[k], fast.stored[k]) for k in loop.stored)
