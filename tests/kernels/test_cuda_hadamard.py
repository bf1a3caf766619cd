"""The CUDA randomized Hadamard kernel against ``RandomizedHadamard`` (its PyTorch reference) on CUDA
machines with nvcc and ninja; everywhere: which sizes it takes, what it refuses, and the order in
which the triton backend asks the rotation kernels."""

import pytest
import torch

from pvq.kernels import ROTATION_KERNELS, backend, cuda_hadamard
from pvq.kernels.availability import triton_runs_on
from pvq.kernels.cuda_build import cuda_build_available
from pvq.kernels.cuda_hadamard import hadamard_rotate_cuda
from pvq.transforms import RandomizedHadamard

needs_cuda = pytest.mark.skipif(not cuda_build_available(), reason="needs a CUDA device, nvcc and ninja")


def test_sizes_and_refusals():
    # powers of two from 16 to 16384, and a dense factor of order <= 4096 times a power of two <= 16384
    # (11008 = 344 x 32, 12 = 12 x 1, 24 = 12 x 2)
    assert [n for n in (8, 12, 16, 24, 4096, 11008, 16384, 32768)
            if cuda_hadamard.supported(RandomizedHadamard(n, seed=0))] == [12, 16, 24, 4096, 11008, 16384]
    rh = RandomizedHadamard(64, seed=0)
    with pytest.raises(ValueError, match="CUDA tensors"):
        hadamard_rotate_cuda(rh, torch.zeros(2, 64))
    with pytest.raises(ValueError, match="n = 64"):
        hadamard_rotate_cuda(rh, torch.zeros(2, 32))
    with pytest.raises(ValueError, match="n = 32768"):
        hadamard_rotate_cuda(RandomizedHadamard(32768, seed=0), torch.zeros(1, 32768))


def test_dense_factors_are_preferred_up_to_a_number_of_rows(monkeypatch):
    monkeypatch.setattr(cuda_hadamard, "cuda_build_available", lambda: True)
    monkeypatch.setattr(cuda_hadamard, "_extension", lambda: object())
    small, large = RandomizedHadamard(14336, seed=0), RandomizedHadamard(11008, seed=0)  # 28 x 512, 344 x 32
    pow2 = RandomizedHadamard(4096, seed=0)
    limit = cuda_hadamard.DENSE_MAX_ROWS
    assert cuda_hadamard.preferred(small, limit) and not cuda_hadamard.preferred(small, limit + 1)
    assert not cuda_hadamard.preferred(large, 1)  # measured slower than the Triton kernel (session 12)
    assert cuda_hadamard.supported(large) and cuda_hadamard.preferred(pow2, 100 * limit)


def test_the_backend_asks_the_cuda_kernel_first_and_only_for_cuda_tensors(monkeypatch):
    assert [k.rotate for k in ROTATION_KERNELS][0] == "cuda_hadamard.hadamard_rotate_cuda"
    assert [k.runs_on for k in ROTATION_KERNELS] == ["availability.cuda_runs_on", "availability.triton_runs_on",
                                                     "availability.cuda_runs_on"]
    asked = []
    monkeypatch.setattr(cuda_hadamard, "preferred", lambda rh, rows: asked.append(rows) or False)

    class Layer:  # what _rotate reads of a QuantizedLinear
        rotation = type("R", (), {"v": RandomizedHadamard(48, seed=1), "u": None})()

        def rotate_input(self, x):
            return self.rotation.v.forward(x)

    x = torch.randn(3, 48)
    torch.testing.assert_close(backend._rotate(Layer(), x, inverse=False), Layer.rotation.v.forward(x))
    assert asked == []  # a CPU tensor never reaches the CUDA kernel's check


def test_the_backend_rotates_a_block_diagonal_input_as_rows_of_its_chunk(monkeypatch):
    """A fused-plan input rotated in chunks of 256 (``--rotation-block``): the kernels see rows of 256
    (here the Triton kernel, on the CPU through its interpreter), and the result is the transform's."""
    from pvq.kernels import triton_hadamard
    from pvq.transforms import LayerRotation

    seen = []
    real = triton_hadamard.hadamard_rotate
    monkeypatch.setattr(triton_hadamard, "hadamard_rotate",
                        lambda rh, x, inverse=False: seen.append((rh.n, tuple(x.shape))) or real(rh, x, inverse))

    class Layer:  # what _rotate reads of a QuantizedLinear
        rotation = LayerRotation(8, 1024, None, 3, 256)

        def rotate_input(self, x):
            return self.rotation.rotate_input(x)

    x = torch.randn(2, 3, 1024)
    torch.testing.assert_close(backend._rotate(Layer(), x, inverse=False), Layer.rotation.rotate_input(x),
                               rtol=1e-5, atol=1e-5)
    # 2 x 3 rows of four chunks through the interpreter; a CUDA machine runs no Triton kernel on CPU tensors
    assert seen == ([(256, (24, 256))] if triton_runs_on(x.device) else [])


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_a_block_diagonal_rotation_on_cuda_equals_the_transform(dtype):
    """down_proj's input of a 7B model in chunks of 256 (``--rotation-block 256``): 43 rows of the power-of-two
    kernel a token, through the backend as a layer runs it."""
    from pvq.transforms import LayerRotation

    class Layer:
        rotation = LayerRotation(4096, 11008, None, 5, 256)

        def rotate_input(self, x):
            return self.rotation.rotate_input(x)

    assert cuda_hadamard.preferred(Layer.rotation.v.chunk, 43)
    x = torch.randn(3, 11008, generator=torch.Generator().manual_seed(1)).cuda().to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(backend._rotate(Layer(), x, inverse=False).float(),
                               Layer.rotation.rotate_input(x.float()), rtol=tol, atol=tol)


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
@pytest.mark.parametrize("n", [4096, 11008])  # no dense factor; one of 344
def test_low_precision_rows_round_trip(dtype, n):
    rh = RandomizedHadamard(n, seed=3)
    x = torch.randn(2, 3, n).cuda().to(dtype)
    y = hadamard_rotate_cuda(rh, x)
    assert y.shape == x.shape and y.dtype == dtype
    torch.testing.assert_close(y.float(), rh.forward(x.float()), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(hadamard_rotate_cuda(rh, y, inverse=True).float(), x.float(), rtol=3e-2, atol=3e-2)


# dense factors: Hadamards of orders 344 x 32 (11008), 28 x 512 (14336, Llama-3's MLP), 12 x 1 (no butterflies),
# a random orthogonal 513 x 8 (4104: the odd part), 12 x 16384 (one block an outer row, 16 outputs a thread);
# one, several and more rows than the backend sends
@needs_cuda
@pytest.mark.parametrize("n", [11008, 14336, 12, 4104, 12 * 16384])
@pytest.mark.parametrize("rows", [1, 3, 70])
@pytest.mark.parametrize("inverse", [False, True])
def test_dense_kernel_equals_the_transform(n, rows, inverse):
    rh = RandomizedHadamard(n, seed=n)
    assert rh.dense_order > 1
    x = torch.randn(rows, n, generator=torch.Generator().manual_seed(rows)).cuda()
    ref = rh.inverse(x) if inverse else rh.forward(x)
    torch.testing.assert_close(hadamard_rotate_cuda(rh, x, inverse=inverse), ref, rtol=1e-4, atol=1e-4)
