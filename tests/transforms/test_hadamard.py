import math

import pytest
import torch

from pvq.errors import TransformError
from pvq.transforms.hadamard import (
    RandomizedHadamard,
    fwht,
    fwht_reference,
    hadamard_matrix,
    hadamard_orders,
    has_hadamard,
    rotate_weight,
    unrotate_weight,
)

AWKWARD = [1, 2, 3, 7, 12, 20, 24, 28, 44, 172, 384, 1032]
LLAMA = [4096, 11008, 14336]


def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


# ------------------------------------------------------------------ FWHT


@pytest.mark.parametrize("n", [1, 2, 4, 8, 64, 512])
def test_fwht_matches_dense_sylvester(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(3, 5, n, generator=g, dtype=torch.float64)
    want = x @ _sylvester(n) / math.sqrt(n)
    torch.testing.assert_close(fwht(x), want, rtol=0, atol=1e-12)
    torch.testing.assert_close(fwht_reference(x), want, rtol=0, atol=1e-12)


def test_fwht_is_its_own_inverse_and_keeps_dtype():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 256, generator=g)
    torch.testing.assert_close(fwht(fwht(x)), x, rtol=0, atol=1e-5)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        y = fwht(x.to(dtype))
        assert y.dtype == dtype
        tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2}.get(dtype, 1e-5)
        torch.testing.assert_close(y.double(), fwht_reference(x.double()), rtol=0, atol=tol)


def test_fwht_rejects_non_power_of_two():
    with pytest.raises(TransformError, match="power-of-two"):
        fwht(torch.zeros(3, 12))


# ------------------------------------------------------------------ dense Hadamard


def test_hadamard_matrix_orders_up_to_200():
    orders = hadamard_orders(200)
    # every multiple of 4 up to 200 except the ones no Paley/Sylvester product reaches
    assert [n for n in range(4, 201, 4) if n not in orders] == [92, 116, 156, 172, 184, 188]
    assert {1, 2} <= set(orders) and all(n in (1, 2) or n % 4 == 0 for n in orders)
    for n in orders:
        h = hadamard_matrix(n)
        assert set(h.unique().tolist()) <= {-1.0, 1.0}
        assert torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.float64)), n


def test_hadamard_matrix_prime_power_fields():
    # Paley I over GF(27) and GF(343), Paley II over GF(9), GF(25), GF(81)
    for n in (28, 344, 20, 52, 164):
        h = hadamard_matrix(n)
        assert torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.float64)), n


def test_hadamard_matrix_power_of_two_is_sylvester():
    assert torch.equal(hadamard_matrix(64), _sylvester(64))


def test_hadamard_matrix_unknown_order_says_which_work():
    assert not has_hadamard(92)
    with pytest.raises(TransformError, match="orders near 92"):
        hadamard_matrix(92)
    with pytest.raises(TransformError):
        hadamard_matrix(0)


# ------------------------------------------------------------------ randomized Hadamard


@pytest.mark.parametrize("n", AWKWARD + LLAMA)
def test_randomized_hadamard_inverse_and_reference(n):
    t = RandomizedHadamard(n, seed=1)
    g = torch.Generator().manual_seed(n)
    x = torch.randn(2, 3, n, generator=g)
    y = t.forward(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    torch.testing.assert_close(t.inverse(y), x, rtol=0, atol=1e-5)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=0)
    if n <= 1032:  # dense reference
        m = t.matrix()
        torch.testing.assert_close(m @ m.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-12)
        torch.testing.assert_close(y.double(), x.double() @ m.T, rtol=0, atol=1e-5)


def test_randomized_hadamard_kinds():
    expect = {
        1: (1, 1), 7: (7, 1), 172: (43, 4), 384: (12, 32), 1032: (516, 2),
        4096: (1, 4096), 11008: (344, 32), 14336: (28, 512),
    }
    for n, (dense, pow2) in expect.items():
        t = RandomizedHadamard(n)
        assert (t.dense_order, t.pow2_order) == (dense, pow2), n
        fallback = n in (7, 172)
        assert t.kind == (RandomizedHadamard.FALLBACK if fallback else RandomizedHadamard.HADAMARD)


def test_randomized_hadamard_seeded_and_state_roundtrip():
    a, b, c = RandomizedHadamard(172, seed=5), RandomizedHadamard(172, seed=5), RandomizedHadamard(172, 6)
    assert torch.equal(a.matrix(), b.matrix()) and not torch.equal(a.matrix(), c.matrix())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 172, generator=g)
    for t in (a, RandomizedHadamard(384, seed=9), RandomizedHadamard(1)):
        xx = torch.randn(4, t.n, generator=g)
        r = RandomizedHadamard.from_state(t.state())
        assert r.kind == t.kind and r.seed == t.seed
        assert torch.equal(r.forward(xx), t.forward(xx))
    assert not torch.equal(a.forward(x), c.forward(x))
    with pytest.raises(TransformError):
        RandomizedHadamard.from_state({"signs": torch.ones(10, dtype=torch.int8), "dense": torch.eye(3), "seed": torch.tensor(0)})


def test_randomized_hadamard_low_precision():
    t = RandomizedHadamard(384, seed=2)
    x = torch.randn(8, 384, generator=torch.Generator().manual_seed(1))
    for dtype, tol in ((torch.float16, 5e-3), (torch.bfloat16, 5e-2)):
        y = t.forward(x.to(dtype))
        assert y.dtype == dtype
        torch.testing.assert_close(y.float(), t.forward(x), rtol=0, atol=tol)


def test_randomized_hadamard_bad_input():
    with pytest.raises(TransformError):
        RandomizedHadamard(0)
    with pytest.raises(TransformError, match="last dim"):
        RandomizedHadamard(12).forward(torch.zeros(3, 13))
    with pytest.raises(TransformError):
        RandomizedHadamard(8).forward(torch.zeros(3, 8, dtype=torch.int64))


# ------------------------------------------------------------------ incoherence and weights


@pytest.mark.parametrize("n", [12, 384, 1032, 4096, 11008, 172, 7])
def test_spike_is_spread(n):
    t = RandomizedHadamard(n, seed=3)
    x = torch.zeros(5, n, dtype=torch.float64)
    x[torch.arange(5), torch.tensor([0, 1, n // 2, n - 2, n - 1]) % n] = 1.0
    y = t.forward(x)
    if t.kind == RandomizedHadamard.HADAMARD:  # every entry exactly 1/sqrt(n)
        torch.testing.assert_close(y.abs(), torch.full_like(y, 1 / math.sqrt(n)), rtol=0, atol=1e-12)
    else:  # Hadamard of order p (x) random orthogonal of order h: |entries| ~ 1/sqrt(n)
        assert y.abs().max() < 4.0 / math.sqrt(n)
        assert y.abs().max() < 0.5 or n < 16


@pytest.mark.parametrize("out_f,in_f", [(384, 172), (96, 1032), (44, 64)])
def test_rotate_weight_spreads_spike_and_inverts(out_f, in_f):
    u, v = RandomizedHadamard(out_f, seed=1), RandomizedHadamard(in_f, seed=2)
    w = torch.zeros(out_f, in_f)
    w[out_f // 3, in_f // 5] = 10.0
    r = rotate_weight(w, u, v)
    want = (u.matrix() @ w.double() @ v.matrix().T).float()
    torch.testing.assert_close(r, want, rtol=0, atol=1e-5)
    assert r.abs().max() < 4.0 * 10.0 / math.sqrt(out_f * in_f)
    torch.testing.assert_close(unrotate_weight(r, u, v), w, rtol=0, atol=1e-4)
    # the layer computes the same thing: W' (V x) = U (W x)
    x = torch.randn(in_f, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(r @ v.forward(x.T).T, u.forward((w @ x).T).T, rtol=0, atol=1e-4)
    torch.testing.assert_close(rotate_weight(w, None, None), w)


# ------------------------------------------------------------------ block-diagonal


@pytest.mark.parametrize("n,block", [(48, 16), (48, 48), (1032, 24), (176, 44), (6, 1)])
def test_block_hadamard_is_the_block_diagonal_of_its_chunk(n, block):
    from pvq.transforms import BlockHadamard

    t = BlockHadamard(n, block, seed=5)
    chunk = RandomizedHadamard(block, seed=5)
    m = t.matrix()
    assert m.shape == (n, n)
    for i in range(0, n, block):  # the same chunk transform on the diagonal, zeros elsewhere
        torch.testing.assert_close(m[i:i + block, i:i + block], chunk.matrix(), rtol=0, atol=0)
        m[i:i + block, i:i + block] = 0
    assert not m.any()
    torch.testing.assert_close(t.matrix() @ t.matrix().T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-12)
    g = torch.Generator().manual_seed(n + block)
    x = torch.randn(2, 3, n, generator=g, dtype=torch.float64)
    torch.testing.assert_close(t.forward(x), x @ t.matrix().T, rtol=0, atol=1e-12)
    torch.testing.assert_close(t.inverse(t.forward(x)), x, rtol=0, atol=1e-12)
    assert t.chunk.n == block and t.forward(x).dtype == x.dtype


def test_block_hadamard_whole_block_equals_the_plain_transform():
    from pvq.transforms import BlockHadamard

    x = torch.randn(4, 344, dtype=torch.float64)
    assert torch.equal(BlockHadamard(344, 344, seed=2).forward(x), RandomizedHadamard(344, seed=2).forward(x))
    assert RandomizedHadamard(344, seed=2).chunk.n == 344  # a plain transform is its own chunk


def test_block_hadamard_refuses_bad_sizes():
    from pvq.transforms import BlockHadamard

    with pytest.raises(TransformError, match="does not divide"):
        BlockHadamard(48, 20)
    with pytest.raises(TransformError, match="positive integer"):
        BlockHadamard(48, 0)
    with pytest.raises(TransformError, match="last dim"):
        BlockHadamard(48, 16).forward(torch.randn(3, 32))
