"""The CUDA one-row split kernel: where it is chosen and what it refuses (everywhere), and against
the split references (CUDA machines with nvcc and ninja only: its decode bit for bit through one-hot
inputs, its product against the float32 reference on awkward sizes, in fp32, fp16 and bf16).
"""

from importlib.resources import files

import pytest
import torch

from pvq.codecs import make_codec
from pvq.kernels import cuda_split, kernel_family
from pvq.kernels.cuda_split import cuda_split_available, split_gemv_cuda
from pvq.kernels.split_runtime import split_decode_reference, split_runtime
from quantized_layers import random_layer as layer

needs_cuda = pytest.mark.skipif(not cuda_split_available(), reason="needs a CUDA device, nvcc and ninja")

CASES = [(1.5, 5, 5, 40), (2.0, 3, 3, 24), (2.5, 7, 19, 56), (3.0, 3, 37, 24), (3.0, 4, 1, 32), (3.0, 2, 21, 272),
         (3.0, 16, 300, 1024)]


def test_source_ships_with_the_package():
    assert (files("pvq.kernels") / "csrc" / "split8_gemv.cu").is_file()
    assert cuda_split._SOURCE.endswith("split8_gemv.cu")


def test_family_is_chosen_only_where_the_kernel_compiles(monkeypatch):
    three, four = make_codec("pvq", 3.0, 8, group_size=16), make_codec("pvq", 4.0, 8, group_size=16)
    monkeypatch.setattr(cuda_split, "cuda_split_available", lambda: False)
    assert kernel_family(three).name == "pvq-split"
    monkeypatch.setattr(cuda_split, "cuda_split_available", lambda: True)
    assert kernel_family(three).name == "pvq-split-cuda"
    assert kernel_family(four).name == "pvq-split"  # N(8, 22) >= 2^22: the Triton kernels
    assert kernel_family(make_codec("pvq", 3.0, 16, group_size=16)).name == "pvq-split"


def test_refuses_inputs_off_the_gpu_before_compiling():
    q = layer(make_codec("pvq", 3.0, 8, group_size=4), 3, 32, seed=0)
    with pytest.raises(ValueError, match="on CUDA"):
        split_gemv_cuda(split_runtime(q, "cpu"), torch.zeros(1, 32))


def test_a_failed_build_warns_and_leaves_the_triton_kernel(monkeypatch):
    import torch.utils.cpp_extension as ext

    def broken(**kwargs):
        raise OSError("no compiler here")

    monkeypatch.setattr(ext, "load", broken)
    cuda_split._extension.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="run the Triton kernel instead"):
            assert cuda_split._extension() is None
    finally:
        cuda_split._extension.cache_clear()


@needs_cuda
@pytest.mark.parametrize("bits, group, out_f, in_f", CASES)
def test_decode_is_bit_exact_through_one_hot_inputs(bits, group, out_f, in_f):
    q = layer(make_codec("pvq", bits, 8, group_size=group), out_f, in_f, seed=out_f + in_f)
    rt = split_runtime(q, "cuda")
    ref = split_decode_reference(rt)
    eye = torch.eye(in_f, device="cuda")
    got = torch.cat([split_gemv_cuda(rt, eye[i:i + 1]) for i in range(in_f)])
    assert torch.equal(got.T, ref)


@needs_cuda
@pytest.mark.parametrize("bits, group, out_f, in_f", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_product_matches_the_reference(bits, group, out_f, in_f, dtype):
    q = layer(make_codec("pvq", bits, 8, group_size=group), out_f, in_f, seed=out_f)
    rt = split_runtime(q, "cuda")
    x = torch.randn(1, in_f, generator=torch.Generator().manual_seed(in_f)).to("cuda", dtype)
    ref = x.float() @ split_decode_reference(rt).T
    for blocks in (0, 1):
        torch.testing.assert_close(split_gemv_cuda(rt, x, blocks_per_sm=blocks), ref, rtol=1e-5, atol=1e-5)


@needs_cuda
def test_rejects_what_it_does_not_take():
    q = layer(make_codec("pvq", 4.0, 8, group_size=16), 3, 128, seed=0)
    with pytest.raises(ValueError, match="use split_matmul"):
        split_gemv_cuda(split_runtime(q, "cuda"), torch.zeros(1, 128, device="cuda"))
