"""The CUDA one-row split kernel against the split references (CUDA machines with nvcc and ninja only).

Its decode is checked bit for bit through one-hot inputs, its product against the float32 reference
on awkward sizes, in fp32, fp16 and bf16.
"""

import pytest
import torch

from pvq.codecs import make_codec
from pvq.kernels.cuda_split import cuda_split_available
from pvq.kernels.split_runtime import split_decode_reference, split_runtime
from quantized_layers import random_layer as layer

if not cuda_split_available():
    pytest.skip("needs a CUDA device, nvcc and ninja", allow_module_level=True)

from pvq.kernels.cuda_split import split_gemv_cuda  # noqa: E402

CASES = [(1.5, 5, 5, 40), (2.0, 3, 3, 24), (2.5, 7, 19, 56), (3.0, 3, 37, 24), (3.0, 4, 1, 32), (3.0, 2, 21, 272),
         (3.0, 16, 300, 1024)]


@pytest.mark.parametrize("bits, group, out_f, in_f", CASES)
def test_decode_is_bit_exact_through_one_hot_inputs(bits, group, out_f, in_f):
    q = layer(make_codec("pvq", bits, 8, group_size=group), out_f, in_f, seed=out_f + in_f)
    rt = split_runtime(q, "cuda")
    ref = split_decode_reference(rt)
    eye = torch.eye(in_f, device="cuda")
    got = torch.cat([split_gemv_cuda(rt, eye[i:i + 1]) for i in range(in_f)])
    assert torch.equal(got.T, ref)


@pytest.mark.parametrize("bits, group, out_f, in_f", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_product_matches_the_reference(bits, group, out_f, in_f, dtype):
    q = layer(make_codec("pvq", bits, 8, group_size=group), out_f, in_f, seed=out_f)
    rt = split_runtime(q, "cuda")
    x = torch.randn(1, in_f, generator=torch.Generator().manual_seed(in_f)).to("cuda", dtype)
    ref = x.float() @ split_decode_reference(rt).T
    for blocks in (0, 1):
        torch.testing.assert_close(split_gemv_cuda(rt, x, blocks_per_sm=blocks), ref, rtol=1e-5, atol=1e-5)


def test_rejects_what_it_does_not_take():
    q = layer(make_codec("pvq", 4.0, 8, group_size=16), 3, 128, seed=0)
    with pytest.raises(ValueError, match="use split_matmul"):
        split_gemv_cuda(split_runtime(q, "cuda"), torch.zeros(1, 128, device="cuda"))
