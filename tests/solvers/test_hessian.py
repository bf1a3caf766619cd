import pytest
import torch

from pvq.errors import PvqError
from pvq.solvers.hessian import (
    HessianAccumulator,
    SolverError,
    damp,
    dead_inputs,
    inverse_cholesky_upper,
)


def test_accumulator_is_token_weighted_mean():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(3, 5, 12, generator=g), torch.randn(1, 12, generator=g), torch.randn(40, 12, generator=g)]
    acc = HessianAccumulator(12)
    for b in batches:
        acc.add(b)
    x = torch.cat([b.reshape(-1, 12) for b in batches]).double()
    assert acc.tokens == 56
    h = acc.hessian()
    assert h.dtype == torch.float64
    torch.testing.assert_close(h, x.T @ x / 56, rtol=1e-12, atol=1e-12)


def test_accumulator_errors():
    acc = HessianAccumulator(8)
    with pytest.raises(SolverError, match="no calibration tokens"):
        acc.hessian()
    with pytest.raises(SolverError, match="last dim must be 8"):
        acc.add(torch.zeros(4, 7))
    with pytest.raises(SolverError, match="NaN"):
        acc.add(torch.full((2, 8), float("nan")))
    with pytest.raises(SolverError):
        HessianAccumulator(0)


def test_damp_adds_relative_diagonal_and_fixes_dead_inputs():
    h = torch.tensor([[4.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert dead_inputs(h).tolist() == [False, False, True]
    d = damp(h, rel=0.1)
    # mean of the live diagonal = 3 -> +0.3; dead input -> 1 (+0.3)
    want = torch.tensor([[4.3, 1.0, 0.0], [1.0, 2.3, 0.0], [0.0, 0.0, 1.3]], dtype=torch.float64)
    torch.testing.assert_close(d, want)
    assert h[2, 2] == 0  # input untouched
    torch.testing.assert_close(damp(h, rel=0.0)[2, 2], torch.tensor(1.0, dtype=torch.float64))


def test_inverse_cholesky_upper():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(30, 20, generator=g, dtype=torch.float64)
    h = damp(a.T @ a / 30)
    u = inverse_cholesky_upper(h)
    assert torch.equal(u, torch.triu(u))
    torch.testing.assert_close(u.T @ u, torch.linalg.inv(h), rtol=1e-9, atol=1e-9)


def test_not_positive_definite_says_what_to_do():
    h = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)  # eigenvalues 3, -1
    with pytest.raises(SolverError, match="raise the damping"):
        inverse_cholesky_upper(damp(h, 0.01))
    assert issubclass(SolverError, PvqError) and issubclass(SolverError, ValueError)
    with pytest.raises(SolverError, match="square"):
        damp(torch.zeros(3, 4))
    with pytest.raises(SolverError, match="NaN"):
        damp(torch.full((2, 2), float("inf")))


@pytest.mark.parametrize("inputs", [16, 64, 384])
def test_accumulator_same_bits_for_any_thread_count(inputs):
    """A batch of many tokens gives the same float64 sum with 1, 2 and 4 threads (a single
    ``x^T x`` over 4,096 tokens does not: the BLAS splits the tokens across threads)."""
    x = torch.randn(2, 2048, inputs, generator=torch.Generator().manual_seed(inputs))
    before = torch.get_num_threads()
    sums = []
    try:
        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            acc = HessianAccumulator(inputs)
            acc.add(x)
            sums.append(acc.sum)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(s, sums[0]) for s in sums[1:])


def test_accumulator_chunked_batch_is_the_mean():
    """A batch longer than a chunk still gives E[x x^T] over all of its tokens."""
    from pvq.solvers.hessian import HESSIAN_CHUNK_TOKENS as c

    x = torch.randn(2 * c + 37, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    acc = HessianAccumulator(24)
    acc.add(x)
    assert acc.tokens == len(x)
    torch.testing.assert_close(acc.hessian(), x.T @ x / len(x), rtol=1e-12, atol=1e-12)


def test_take_equals_hessian_bit_for_bit_and_is_used_once():
    g = torch.Generator().manual_seed(3)
    a, b = HessianAccumulator(24), HessianAccumulator(24)
    for _ in range(3):
        x = torch.randn(700, 24, generator=g).to(torch.bfloat16)  # more than one 512-token chunk
        a.add(x)
        b.add(x)
    h = a.hessian()
    taken = b.take()
    assert torch.equal(h, taken)
    with pytest.raises(SolverError, match="taken"):
        b.hessian()
    with pytest.raises(SolverError, match="taken"):
        b.add(x)


def _live_square_float64(n: int) -> int:
    """Distinct storages of live float64 [n, n] tensors."""
    import gc
    import warnings

    seen = set()
    with warnings.catch_warnings():  # some objects gc finds warn when their type is asked for
        warnings.simplefilter("ignore")
        # type(o), not isinstance: isinstance asks a weakref.proxy's referent for its class, and raises ReferenceError
        # where it has died (a proxy left by an earlier test of the same worker: CI, session 29)
        objs = [o for o in gc.get_objects() if issubclass(type(o), torch.Tensor)]
    for o in objs:
        if o.dtype == torch.float64 and tuple(o.shape) == (n, n):
            seen.add(o.untyped_storage().data_ptr())
    return len(seen)


def test_solve_holds_few_hessian_sized_matrices(monkeypatch):
    """The solve of a rotated layer, its Hessian handed over as the driver does it (a temporary):
    when the inverse is formed, only the rotated Hessian and the Cholesky factor are alive (before
    session 11: also the unrotated Hessian and the damped copy)."""
    from pvq.codecs.scalar import UniformCodec
    from pvq.solvers.linear import SolverConfig, quantize_linear
    from pvq.transforms.rotation import LayerRotation

    n = 96
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, n, generator=g, dtype=torch.float64)
    acc = HessianAccumulator(n)
    acc.add(torch.randn(400, n, generator=g))
    counts = []
    real = torch.cholesky_inverse

    def counting(low, *args, **kw):
        counts.append(_live_square_float64(n))
        return real(low, *args, **kw)

    monkeypatch.setattr(torch, "cholesky_inverse", counting)
    rot = LayerRotation(32, n, 1, 2)
    quantize_linear(w, acc.take(), UniformCodec(3, 1, 32), rot, SolverConfig())
    assert counts == [2]
