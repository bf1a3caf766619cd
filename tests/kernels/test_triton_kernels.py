"""Triton kernels against their PyTorch references on random layers of awkward sizes.

On a machine without CUDA the kernels run under ``TRITON_INTERPRET=1`` (set by
``tests/conftest.py`` before Triton is imported): decodes are bit-exact, matmuls
within float32 accumulation rounding.
"""

import pytest
import torch

from pvq.codecs import make_codec
from pvq.kernels.runtime import (
    pyramid_decode_reference,
    pyramid_matmul_reference,
    pyramid_points_reference,
    pyramid_runtime,
    table_decode_reference,
    table_matmul_reference,
    table_runtime,
)
from quantized_layers import random_layer as layer

triton_kernels = pytest.importorskip("pvq.kernels.triton_kernels", reason="Triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# D and K at the edges: D=8 and D=16; 1 bit (K small) to 62-bit codes (K large); odd sizes
PVQ_CASES = [(8, 1.5, 3, 37, 24), (8, 4.0, 5, 5, 120), (16, 3.0, 3, 19, 48), (16, 3.6, 5, 7, 80)]  # the last: 54-bit codes, K=31


@pytest.mark.parametrize("dim, bits, group, out_f, in_f", PVQ_CASES)
def test_pyramid_decode_is_bit_exact(dim, bits, group, out_f, in_f):
    q = layer(make_codec("pvq", bits, dim, group_size=group, index_order="fischer"), out_f, in_f, seed=dim + out_f)
    rt = pyramid_runtime(q, DEVICE)
    # the reference's integer points are the codec's own (exact unrank)
    points, _ = pyramid_points_reference(pyramid_runtime(q, "cpu"))
    assert torch.equal(points, _codec_points(q))
    ref = pyramid_decode_reference(rt)
    assert torch.equal(triton_kernels.pyramid_decode(rt, block=32), ref)
    assert torch.equal(triton_kernels.pyramid_decode(rt, torch.float16, block=32), ref.half())  # the backend's prefill
    torch.testing.assert_close(ref.cpu(), q.rotated_weight(), rtol=0, atol=1e-6)


def _codec_points(q):
    from pvq.codecs.pyramid import pyramid_unrank

    return pyramid_unrank(q.codes()["index"], q.codec.dim, q.codec.pulses)


@pytest.mark.parametrize("dim, bits, group, out_f, in_f", PVQ_CASES[:3])
@pytest.mark.parametrize("batch", [1, 3, 16])
def test_pyramid_matmul_matches_the_reference(dim, bits, group, out_f, in_f, batch):
    q = layer(make_codec("pvq", bits, dim, group_size=group, index_order="fischer"), out_f, in_f, seed=batch)
    rt = pyramid_runtime(q, DEVICE)
    x = torch.randn(batch, in_f, generator=torch.Generator().manual_seed(batch)).to(DEVICE)
    got = triton_kernels.pyramid_matmul(rt, x, block_o=8, nv=4)
    torch.testing.assert_close(got, pyramid_matmul_reference(rt, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_e8_decode_is_bit_exact_and_matmul_matches(bits):
    q = layer(make_codec("e8", bits, 8, group_size=12), 13, 96, seed=bits)
    rt = table_runtime(q, DEVICE)
    ref = table_decode_reference(rt)
    assert torch.equal(ref.cpu(), q.rotated_weight())
    assert torch.equal(triton_kernels.table_decode(rt, block=32), ref)
    assert torch.equal(triton_kernels.table_decode(rt, torch.bfloat16, block=32), ref.bfloat16())
    for batch in (1, 5):
        x = torch.randn(batch, 96, generator=torch.Generator().manual_seed(batch)).to(DEVICE)
        torch.testing.assert_close(triton_kernels.table_matmul(rt, x, block_o=8, nv=4),
                                   table_matmul_reference(rt, x), rtol=1e-5, atol=1e-5)


def test_codes_wider_than_the_kernels_read_are_refused():
    from pvq.errors import QuantizeError

    q = layer(make_codec("pvq", 3.9, 16, group_size=5, index_order="fischer"), 3, 80, seed=0)  # 59-bit codes
    with pytest.raises(QuantizeError, match="59-bit codes; the PVQ kernels decode up to 56 bits"):
        pyramid_runtime(q, DEVICE)


def test_runtimes_read_the_stored_codes_in_place():
    q = layer(make_codec("pvq", 3.0, 16, group_size=3, index_order="fischer"), 5, 48, seed=1)
    assert pyramid_runtime(q).codes.data_ptr() == q.packed_codes.data_ptr()
    e8 = layer(make_codec("e8", 4, 8, group_size=12), 5, 96, seed=1)
    rt = table_runtime(e8)
    assert rt.codes[0].data_ptr() == e8.packed_stage0.data_ptr() and rt.nbytes() == 0
