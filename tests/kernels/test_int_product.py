"""The integer product: exact dots, fast paths (torch._int_mm, Triton under its interpreter) against
the reference, and against the dequantized float product."""

import pytest
import torch

from pvq.codecs.activation import make_activation_quantizer
from pvq.errors import QuantizeError
from pvq.kernels.int_product import (
    IntOperand,
    common_slice,
    int_dots_reference,
    int_product,
    int_product_intmm,
    int_product_reference,
    int_product_triton,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # fast paths on the GPU where there is one


def _run(impl, x, w):
    """``impl(x, w)`` with both operands on DEVICE (the reference stays on the CPU); result on the CPU."""
    if impl is int_product_reference:
        return impl(x, w)
    on = [IntOperand(op.points.to(DEVICE), op.gains.to(DEVICE)) for op in (x, w)]
    return impl(*on).cpu()


def _operand(rows, n, s, seed, k=127):
    g = torch.Generator().manual_seed(seed)
    pts = torch.randint(-k, k + 1, (rows, n), generator=g).to(torch.int8)
    gains = torch.rand(rows, n // s, generator=g) * 2 + 0.01
    return IntOperand(pts, gains)


SHAPES = [(1, 7, 24, 24, 24), (5, 70, 72, 24, 24), (17, 33, 96, 8, 24), (33, 9, 60, 60, 12), (3, 130, 176, 16, 16)]


@pytest.mark.parametrize("t,o,n,sx,sw", SHAPES)
def test_fast_paths_are_exact_before_the_scaling(t, o, n, sx, sw):
    """With unit gains the product is a sum of integer dots: every path gives it exactly."""
    x, w = _operand(t, n, sx, 1), _operand(o, n, sw, 2)
    x.gains.fill_(1.0)
    w.gains.fill_(1.0)
    exact = (x.points.long() @ w.points.long().T).double()
    assert exact.abs().max() < 2**24  # exactly representable in float32
    for impl in (int_product_reference, int_product_intmm, int_product_triton):
        assert torch.equal(_run(impl, x, w).double(), exact), impl.__name__


@pytest.mark.parametrize("t,o,n,sx,sw", SHAPES)
def test_fast_paths_match_the_reference(t, o, n, sx, sw):
    x, w = _operand(t, n, sx, 3), _operand(o, n, sw, 4)
    ref = int_product_reference(x, w)
    s = common_slice(sx, sw)
    dots = int_dots_reference(x.points, w.points, s)
    assert torch.equal(dots.sum(2), x.points.long() @ w.points.long().T)  # per-slice dots are exact
    for impl in (int_product_intmm, int_product_triton):
        got = _run(impl, x, w)
        assert torch.allclose(got, ref, rtol=2e-6, atol=2e-6 * float(ref.abs().max())), impl.__name__


@pytest.mark.parametrize("config", [{"split": 3}, {"split": 4, "block_t": 64, "block_o": 64},
                                    {"split": 2, "block_t": 128, "block_o": 128, "warps": 8}])
def test_slices_split_over_programs_add_up(config):
    """The Triton kernel with its slices split over programs (atomic partial sums), awkward sizes:
    integer dots exact at unit gains, the reference's sums otherwise."""
    _check_triton_config(_operand(19, 80, 8, 7), _operand(70, 80, 8, 8), config)  # 10 slices: 4 + 4 + 2, ...


def _check_triton_config(x, w, config):
    """The Triton product of ``x``, ``w`` under ``config`` on DEVICE: the reference's sums, and the
    exact integer dots at unit gains."""
    ref = int_product_reference(x, w)
    on = [IntOperand(op.points.to(DEVICE), op.gains.to(DEVICE)) for op in (x, w)]
    got = int_product_triton(*on, config=config).cpu()
    assert torch.allclose(got, ref, rtol=2e-6, atol=2e-6 * float(ref.abs().max()))
    for op in on:
        op.gains.fill_(1.0)
    exact = (x.points.long() @ w.points.long().T).double()
    assert torch.equal(int_product_triton(*on, config=config).cpu().double(), exact)


@pytest.mark.parametrize("o,n,s", [(70, 80, 8), (33, 72, 24), (5, 96, 32), (17, 40, 40)])
@pytest.mark.parametrize("config", [{}, {"split": 3, "jb": 1}, {"split": 2, "jb": 4, "block_o": 32}])
def test_one_token_gemv_kernel(o, n, s, config):
    """The one-token kernel (int32 dots on CUDA cores, padded slices, split sums), awkward sizes:
    exact at unit gains, the reference's sums otherwise."""
    _check_triton_config(_operand(1, n, s, 11), _operand(o, n, s, 12), {"kernel": "gemv", **config})


def test_gemv_takes_one_token_only_and_dot_is_the_default():
    from pvq.kernels.triton_int import int_product_config

    one = int_product_config(1, 4096, 128)
    assert (one["kernel"], one["block_t"], one["block_o"]) == ("dot", 16, 128)  # the H100 sweep's pick at one token
    assert int_product_config(1, 4096, 128, kernel="gemv")["kernel"] == "gemv"
    assert int_product_config(2, 4096, 128)["block_o"] == 64
    x, w = _operand(2, 64, 8, 1), _operand(3, 64, 8, 2)
    with pytest.raises(ValueError, match="one token"):
        int_product_triton(x, w, config={"kernel": "gemv"})


def test_reference_equals_the_dequantized_float_product():
    """Quantized activations (pvq, rtn) times PVQ-like weight points: the integer product equals
    x_hat @ w_hat^T computed in float64 from the dequantized operands, to float32 rounding."""
    x = torch.randn(11, 96, generator=torch.Generator().manual_seed(5))
    w = _operand(13, 96, 24, 6, k=9)
    w_hat = (w.points.double().view(13, 4, 24) * w.gains.double().unsqueeze(2)).view(13, 96)
    for q in (make_activation_quantizer("pvq", 4, 96, 24), make_activation_quantizer("rtn", 4, 96)):
        a = q.quantize(x)
        want = a.dequantize().double() @ w_hat.T
        for impl in ("reference", "intmm", "triton"):
            dev = "cpu" if impl == "reference" else DEVICE
            got = int_product(IntOperand(a.points.to(dev), a.gains.to(dev)), IntOperand(w.points.to(dev), w.gains.to(dev)),
                              impl).double().cpu()
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max())), (q.name, impl)


def test_slices_that_do_not_nest_are_refused():
    with pytest.raises(QuantizeError, match="do not nest.*--act-dim 24"):
        common_slice(16, 24)
    x, w = _operand(2, 48, 16, 1), _operand(3, 48, 24, 2)
    with pytest.raises(QuantizeError, match="do not nest"):
        int_product_reference(x, w)
    big = IntOperand(torch.full((1, 8), 300, dtype=torch.int16), torch.ones(1, 1))
    with pytest.raises(QuantizeError, match="exceed int8"):
        int_product(big, _operand(2, 8, 8, 1), "intmm")
    assert int_product(big, _operand(2, 8, 8, 1), "reference").shape == (1, 2)
