"""The CUDA randomized Hadamard kernel against ``RandomizedHadamard`` (its PyTorch reference) on CUDA
machines with nvcc and ninja; everywhere: which sizes it takes, what it refuses, and the order in
which the triton backend asks the rotation kernels."""

import pytest
import torch

from pvq.kernels import ROTATION_KERNELS, backend, cuda_hadamard
from pvq.kernels.cuda_build import cuda_build_available
from pvq.kernels.cuda_hadamard import hadamard_rotate_cuda
from pvq.transforms import RandomizedHadamard

needs_cuda = pytest.mark.skipif(not cuda_build_available(), reason="needs a CUDA device, nvcc and ninja")


def test_sizes_and_refusals():
    assert [n for n in (8, 16, 4096, 11008, 16384, 32768) if cuda_hadamard.supported(RandomizedHadamard(n, seed=0))] \
        == [16, 4096, 16384]  # powers of two from 16 to 16384; 11008 = 344 x 32 has a dense factor
    rh = RandomizedHadamard(64, seed=0)
    with pytest.raises(ValueError, match="CUDA tensors"):
        hadamard_rotate_cuda(rh, torch.zeros(2, 64))
    with pytest.raises(ValueError, match="n = 64"):
        hadamard_rotate_cuda(rh, torch.zeros(2, 32))
    with pytest.raises(ValueError, match="n = 11008"):
        hadamard_rotate_cuda(RandomizedHadamard(11008, seed=0), torch.zeros(1, 11008))


def test_the_backend_asks_the_cuda_kernel_first_and_only_for_cuda_tensors(monkeypatch):
    assert [k.rotate for k in ROTATION_KERNELS][0] == "cuda_hadamard.hadamard_rotate_cuda"
    assert ROTATION_KERNELS[0].cuda_only and not ROTATION_KERNELS[-1].cuda_only
    asked = []
    monkeypatch.setattr(cuda_hadamard, "preferred", lambda rh, rows: asked.append(rows) or False)

    class Layer:  # what _rotate reads of a QuantizedLinear
        rotation = type("R", (), {"v": RandomizedHadamard(48, seed=1), "u": None})()

        def rotate_input(self, x):
            return self.rotation.v.forward(x)

    x = torch.randn(3, 48)
    torch.testing.assert_close(backend._rotate(Layer(), x, inverse=False), Layer.rotation.v.forward(x))
    assert asked == []  # a CPU tensor never reaches the CUDA kernel's check


# every power of two it takes (one to four radix-16 passes, the first of one to four steps); one and
# several rows
@needs_cuda
@pytest.mark.parametrize("n", [2**e for e in range(4, 15)])
@pytest.mark.parametrize("rows", [1, 5])
@pytest.mark.parametrize("inverse", [False, True])
def test_kernel_equals_the_transform(n, rows, inverse):
    rh = RandomizedHadamard(n, seed=n)
    x = torch.randn(rows, n, generator=torch.Generator().manual_seed(rows)).cuda()
    ref = rh.inverse(x) if inverse else rh.forward(x)
    torch.testing.assert_close(hadamard_rotate_cuda(rh, x, inverse=inverse), ref, rtol=1e-5, atol=1e-5)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_rows_round_trip(dtype):
    rh = RandomizedHadamard(4096, seed=3)
    x = torch.randn(2, 3, 4096).cuda().to(dtype)
    y = hadamard_rotate_cuda(rh, x)
    assert y.shape == x.shape and y.dtype == dtype
    torch.testing.assert_close(y.float(), rh.forward(x.float()), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(hadamard_rotate_cuda(rh, y, inverse=True).float(), x.float(), rtol=3e-2, atol=3e-2)
