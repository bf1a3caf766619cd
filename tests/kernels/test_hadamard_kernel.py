"""The one-launch randomized Hadamard kernel against ``RandomizedHadamard`` (its PyTorch reference)."""

import pytest
import torch

from pvq.transforms import RandomizedHadamard

triton_hadamard = pytest.importorskip("pvq.kernels.triton_hadamard", reason="Triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# in registers: powers of two 256..4096 (p1 != p2 too), a dense factor of order 12 and 20 (padded to
# 16 / 32); tiled: h = 344 (11008, padded to 352), 12 (384), 20 (320: p = 16), 148 (9472: p = 64)
@pytest.mark.parametrize("n", [256, 512, 4096, 12 * 256, 20 * 512, 11008, 384, 320, 148 * 64])
@pytest.mark.parametrize("inverse", [False, True])
def test_kernel_equals_the_transform(n, inverse):
    rh = RandomizedHadamard(n, seed=n)
    assert triton_hadamard.supported(rh)
    x = torch.randn(3, 2, n, generator=torch.Generator().manual_seed(n)).to(DEVICE)
    ref = rh.inverse(x) if inverse else rh.forward(x)
    got = triton_hadamard.hadamard_rotate(rh, x, inverse=inverse)
    assert got.shape == x.shape and got.dtype == x.dtype
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    back = triton_hadamard.hadamard_rotate(rh, got, inverse=not inverse)
    torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [4096, 11008])
def test_tf32x3_products_and_eight_warps(n):
    rh = RandomizedHadamard(n, seed=2)
    x = torch.randn(3, n, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    got = triton_hadamard.hadamard_rotate(rh, x, precision="tf32x3", num_warps=8)
    torch.testing.assert_close(got, rh.forward(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="precision must be one of"):
        triton_hadamard.hadamard_rotate(rh, x, precision="tf32")


def test_fp16_rows_and_unsupported_sizes():
    rh = RandomizedHadamard(1024, seed=1)
    x = torch.randn(5, 1024, generator=torch.Generator().manual_seed(0)).to(DEVICE).half()
    torch.testing.assert_close(triton_hadamard.hadamard_rotate(rh, x), rh.forward(x), rtol=2e-3, atol=2e-3)
    for n in (128, 8192, 28672, 1032, 13824):  # h = 1, p < 256; p = 8192; h_pad p > 16384, p > 64; p = 2; p = 128
        small = RandomizedHadamard(n, seed=0)
        assert not triton_hadamard.supported(small)
        with pytest.raises(ValueError, match="does not take"):
            triton_hadamard.hadamard_rotate(small, torch.zeros(1, n, device=DEVICE))
    tiled = RandomizedHadamard(11008, seed=0)  # the tiled kernel: up to 64 rows; registers: any number
    assert triton_hadamard.preferred(tiled, 64) and not triton_hadamard.preferred(tiled, 65)
    assert triton_hadamard.preferred(RandomizedHadamard(4096, seed=0), 4096)
