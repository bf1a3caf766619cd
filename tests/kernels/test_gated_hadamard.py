"""The gated activation and down_proj's input rotation in one kernel (``gated_hadamard_rotate``) against
``BlockHadamard.forward(silu(gate) * up)``, and the Triton backend's ``gated_linear`` against the plain forward."""

import pytest
import torch
import torch.nn.functional as F

from pvq.codecs import make_codec
from pvq.models import QuantizedLinear
from pvq.models.qlinear import buffer_name, set_backend
from pvq.transforms import LayerRotation
from pvq.transforms.hadamard import BlockHadamard, RandomizedHadamard

triton_hadamard = pytest.importorskip("pvq.kernels.triton_hadamard", reason="Triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("n, chunks, tokens", [(256, 43, 1), (256, 3, 5), (512, 2, 2), (2048, 1, 3), (4096, 2, 1)])
def test_kernel_equals_the_reference_on_halves_of_a_merged_product(n, chunks, tokens):
    width = n * chunks
    bh = BlockHadamard(width, n, seed=n + chunks)
    gu = torch.randn(tokens, 2 * width, generator=torch.Generator().manual_seed(chunks)).to(DEVICE)
    gate, up = gu[:, :width], gu[:, width:]  # views: row stride 2 * width
    got = triton_hadamard.gated_hadamard_rotate(bh.chunk, gate, up)
    torch.testing.assert_close(got, bh.forward(F.silu(gate) * up), rtol=1e-5, atol=1e-5)
    for dtype, tol in ((torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)):  # one rounding, at the end
        got = triton_hadamard.gated_hadamard_rotate(bh.chunk, gate.to(dtype), up.to(dtype))
        want = bh.forward(F.silu(gate.to(dtype).float()) * up.to(dtype).float())
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol * want.abs().max().item())


def test_kernel_refusals():
    gate = torch.randn(2, 512, device=DEVICE)
    with pytest.raises(ValueError, match="power-of-two transforms"):
        triton_hadamard.gated_hadamard_rotate(RandomizedHadamard(384, seed=0), gate[:, :384], gate[:, :384])
    with pytest.raises(ValueError, match="gated activation"):
        triton_hadamard.gated_hadamard_rotate(RandomizedHadamard(256, seed=0), gate, gate, activation="gelu")
    with pytest.raises(ValueError, match="one shape and strides"):
        triton_hadamard.gated_hadamard_rotate(RandomizedHadamard(256, seed=0), gate, gate[:, :256])
    assert triton_hadamard.gated_supported(BlockHadamard(11008, 256, seed=1).chunk)
    assert not triton_hadamard.gated_supported(RandomizedHadamard(11008, seed=1))


@pytest.mark.parametrize("block", [256, None])
def test_triton_backend_gated_linear_equals_the_plain_forward(block, monkeypatch):
    """A D = 8 layer whose input is rotated in chunks of 256 (or whole, 512: a power of two): through the gated
    kernel; a whole input of 768 (a dense factor): the plain path."""
    from quantized_layers import random_layer

    calls = []
    kernel = triton_hadamard.gated_hadamard_rotate
    monkeypatch.setattr(triton_hadamard, "gated_hadamard_rotate", lambda *a, **k: calls.append(a[0].n) or kernel(*a, **k))

    for width in (512, 768) if block is None else (768,):
        codec = make_codec("pvq", 3.0, 8, group_size=16)
        plain = random_layer(codec, 64, width, seed=3)
        layer = QuantizedLinear(width, 64, plain.codec_config, {k: (tuple(v.shape), v.dtype)
                                                                 for k, v in plain.stored_tensors().items()},
                                rotation=LayerRotation(64, width, None, 5, block).seeds())
        for k, v in plain.stored_tensors().items():
            getattr(layer, buffer_name(k)).copy_(v)
        layer.to(DEVICE)
        g = torch.Generator().manual_seed(width)
        gate, up = torch.randn(2, 3, width, generator=g).to(DEVICE), torch.randn(2, 3, width, generator=g).to(DEVICE)
        want = layer(F.silu(gate) * up)  # the dense backend (CPU) or the kernels' (CUDA)
        set_backend(layer, "triton")
        got = layer.gated_forward(gate, up)
        set_backend(layer, None)
        assert got.shape == (2, 3, 64)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    assert calls == ([256] if block else [512])  # 768 whole (a dense factor of 3) took the plain path
