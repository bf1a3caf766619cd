"""The randomized Hadamard of prefill's rows as two products (:mod:`pvq.kernels.matmul_hadamard`) against the
transform's own ``forward`` / ``inverse``: to float64 rounding in float64, to the dtype's rounding in fp16 / bf16
(CPU; on CUDA the same products run on tensor cores)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pvq.kernels import backend
from pvq.kernels.matmul_hadamard import MIN_ROWS, hadamard_rotate_matmul, preferred
from pvq.transforms import RandomizedHadamard

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@settings(max_examples=40, deadline=None)
@given(odd=st.sampled_from([1, 3, 5, 7, 11, 43]), log_p=st.integers(0, 7), rows=st.integers(1, 9),
       seed=st.integers(0, 2**16), inverse=st.booleans())
def test_two_products_equal_the_transform_in_float64(odd, log_p, rows, seed, inverse):
    n = odd * 2**log_p * (4 if odd > 1 and seed % 2 else 1)  # dense factors of Hadamard and of random kind
    rh = RandomizedHadamard(n, seed=seed)
    x = torch.randn(rows, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    ref = rh.inverse(x) if inverse else rh.forward(x)
    got = hadamard_rotate_matmul(rh, x, inverse=inverse)
    assert got.dtype == x.dtype and got.shape == x.shape
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    back = hadamard_rotate_matmul(rh, got, inverse=not inverse)  # orthogonal: each undoes the other
    torch.testing.assert_close(back, x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype, floor", [(torch.float16, 2e-3), (torch.bfloat16, 1.2e-2)])
@pytest.mark.parametrize("n", [11008, 14336, 5 * 64])
def test_low_precision_rows_stay_within_their_rounding(dtype, floor, n):
    """fp16 / bf16: rounded after each product, so within a small multiple of one rounding of the float32 path
    (relative to each row's norm; 2^-11 and 2^-8 are one rounding)."""
    rh = RandomizedHadamard(n, seed=1)
    x = torch.randn(MIN_ROWS, n, generator=torch.Generator().manual_seed(2)).to(dtype).to(DEVICE)
    for inverse in (False, True):
        ref = (rh.inverse if inverse else rh.forward)(x.double().cpu())
        got = hadamard_rotate_matmul(rh, x, inverse=inverse)
        assert got.dtype == dtype
        rel = ((got.double().cpu() - ref).norm(dim=1) / ref.norm(dim=1)).max()
        assert rel < floor, (n, dtype, inverse, float(rel))


def test_preferred_for_a_dense_factor_at_prefill_rows_only():
    dense, pow2 = RandomizedHadamard(11008), RandomizedHadamard(4096)
    assert dense.dense_order > 1 and pow2.dense_order == 1
    assert preferred(dense, MIN_ROWS) and preferred(dense, 2048)
    assert not preferred(dense, MIN_ROWS - 1) and not preferred(pow2, 2048)
    entry = [k for k in backend.ROTATION_KERNELS if k.rotate == "matmul_hadamard.hadamard_rotate_matmul"]
    assert len(entry) == 1 and entry[0].runs_on == "availability.cuda_runs_on"  # CUDA only: the CPU keeps float32


def test_bad_rows_are_refused():
    rh = RandomizedHadamard(12)
    for bad in (torch.zeros(3, 8), torch.zeros(12), torch.zeros(2, 12, dtype=torch.int32)):
        with pytest.raises(ValueError, match=r"x must be float \[rows, 12\]"):
            hadamard_rotate_matmul(rh, bad)
