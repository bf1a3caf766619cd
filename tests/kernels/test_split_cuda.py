"""The CUDA one-row split kernel: where it is chosen and what it refuses (everywhere), and against
the split references (CUDA machines with nvcc and ninja only: its decode bit for bit through one-hot
inputs, its product against the float32 reference on awkward sizes, in fp32, fp16 and bf16).
"""

import dataclasses
from functools import lru_cache
from importlib.resources import files

import pytest
import torch

from pvq.codecs import make_codec
from pvq.kernels import cuda_leaf, cuda_split, kernel_family
from pvq.kernels.cuda_build import cuda_build_available
from pvq.kernels.cuda_split import split_gemv_cuda
from pvq.kernels.split_runtime import split_decode_reference, split_runtime
from quantized_layers import random_layer as layer

needs_cuda = pytest.mark.skipif(not cuda_build_available(), reason="needs a CUDA device, nvcc and ninja")

CASES = [(1.5, 5, 5, 40), (2.0, 3, 3, 24), (2.5, 7, 19, 56), (3.0, 3, 37, 24), (3.0, 4, 1, 32), (3.0, 2, 21, 272),
         (3.0, 16, 300, 1024)]


def test_source_ships_with_the_package():
    assert (files("pvq.kernels") / "csrc" / "split8_gemv.cu").is_file()
    assert cuda_split._SOURCE.endswith("split8_gemv.cu")


def test_family_is_chosen_only_where_the_kernel_compiles(monkeypatch):
    three, four = make_codec("pvq", 3.0, 8, group_size=16), make_codec("pvq", 4.0, 8, group_size=16)
    monkeypatch.setattr(cuda_leaf, "cuda_build_available", lambda: False)  # the leaf-pair family comes first
    monkeypatch.setattr(cuda_split, "cuda_build_available", lambda: False)
    assert kernel_family(three).name == "pvq-split"
    monkeypatch.setattr(cuda_split, "cuda_build_available", lambda: True)
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
    got = split_gemv_cuda(rt, x)  # float32 sums rounded once to x's dtype
    assert got.dtype == dtype
    tol = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    torch.testing.assert_close(got.float(), ref, rtol=tol, atol=tol * ref.abs().max().item())


@lru_cache(maxsize=None)
def random_code_runtime(bits: float, group: int, out_f: int, in_f: int, seed: int):
    """A split runtime of ``[out_f, in_f]`` with uniformly random valid codes and scales (the layout of
    a quantized layer of that shape, without quantizing millions of weights); built once per process
    (the several-row tests share them: packing on the CPU is most of their time)."""
    from pvq.codecs.packing import pack_bits
    from pvq.codecs.pyramid_counts import pyramid_count

    codec = make_codec("pvq", bits, 8, group_size=group)
    rt = split_runtime(layer(codec, 2, 8 * group, seed=seed), "cuda")
    g = torch.Generator().manual_seed(seed)
    n = out_f * in_f // 8
    codes = torch.randint(0, pyramid_count(8, rt.pulses) * rt.num_levels, (n,), generator=g)
    words = pack_bits(codes, rt.code_bits)
    words = torch.cat([words, words.new_zeros(-words.numel() % 4)]).view(torch.int32)
    scales = (torch.rand(n // group, generator=g) + 0.5).half()
    return dataclasses.replace(rt, out_features=out_f, in_features=in_f, words=words.cuda(), scales=scales.cuda())


# the kernel's layouts: one vector a lane and four rows a step (several steps a row group), two, three
# and four vectors a lane (inputs past 4096, 8192, 12288 and 24576), few rows over many SMs
WIDE = [(3.0, 16, 2000, 4096), (3.0, 3, 300, 4104), (2.0, 4, 67, 8800), (3.0, 8, 5, 25600), (2.5, 5, 1, 13000),
        (3.0, 16, 28672 + 5, 256)]


@needs_cuda
@pytest.mark.parametrize("bits, group, out_f, in_f", WIDE)
def test_product_matches_the_reference_in_every_layout(bits, group, out_f, in_f):
    rt = random_code_runtime(bits, group, out_f, in_f, seed=out_f + in_f)
    x = torch.randn(1, in_f, generator=torch.Generator().manual_seed(in_f)).to("cuda", torch.float16)
    ref = x.float() @ split_decode_reference(rt).T
    torch.testing.assert_close(split_gemv_cuda(rt, x).float(), ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item())


@needs_cuda
def test_rejects_what_it_does_not_take():
    q = layer(make_codec("pvq", 4.0, 8, group_size=16), 3, 128, seed=0)
    with pytest.raises(ValueError, match="use split_matmul"):
        split_gemv_cuda(split_runtime(q, "cuda"), torch.zeros(1, 128, device="cuda"))


@pytest.mark.parametrize("pulses", range(1, 14))
def test_division_magic_is_exact_for_every_split_dividend(pulses):
    """Every (index within the split of j, divisor N(4, K - j)) the kernel divides, exhaustively."""
    import numpy as np

    from pvq.codecs.pyramid_counts import pyramid_count
    from pvq.kernels.cuda_split import division_magic, pair_table

    table = pair_table(pulses, "cpu")
    for j in range(pulses + 1):
        d = pyramid_count(4, pulses - j)
        m = division_magic(d)
        assert 0 < m < 1 << 32
        n = np.arange(pyramid_count(4, j) * d, dtype=np.uint64)
        assert (((2 * n) * np.uint64(m)) >> np.uint64(32) == n // np.uint64(d)).all()
        assert (int(table[j, 1]), int(table[j, 2]) & 0xFFFFFFFF) == (d, m)


def test_division_magic_covers_every_pulse_count_the_kernel_takes():
    from pvq.codecs.pyramid_counts import pyramid_count
    from pvq.kernels.split_lean import LEAN_MAX_COUNT

    assert max(k for k in range(1, 40) if pyramid_count(8, k) < LEAN_MAX_COUNT) == 13


def test_packed_tables_hold_the_lean_tables():
    from pvq.kernels.cuda_split import _buckets32, pair_table
    from pvq.kernels.split_lean import lean_tables

    for pulses in (4, 6, 11, 13):
        buckets, pair, _ = lean_tables(pulses, "cpu")
        b32 = _buckets32(pulses, "cpu").to(torch.int64)
        assert torch.equal(b32 >> 5, buckets >> 32) and torch.equal(b32 & 31, buckets & 0xFFFFFFFF)
        packed = pair_table(pulses, "cpu").to(torch.int64) & 0xFFFFFFFF
        assert torch.equal(packed[:, 0], pair[:, 0] & 0xFFFFFFFF)  # S_8(K, j)
        assert torch.equal(packed[:, 3], pair[:, 1] >> 32)  # the leaf offsets


def test_refuses_more_rows_than_one_launch_takes():
    q = layer(make_codec("pvq", 3.0, 8, group_size=4), 3, 32, seed=0)
    with pytest.raises(ValueError, match="B <= 8"):
        split_gemv_cuda(split_runtime(q, "cpu"), torch.zeros(9, 32))


# several input rows: one vector a lane (rows in two steps), two (inputs past 8192 and 11008), rows not a
# multiple of the warp, the widest input the several-row kernel takes
ROWS = [(3.0, 16, 300, 4096), (3.0, 3, 37, 4104), (2.0, 4, 67, 11008), (3.0, 8, 5, 16384), (2.5, 5, 1, 1000)]


@needs_cuda
@pytest.mark.parametrize("bits, group, out_f, in_f", ROWS)
@pytest.mark.parametrize("batch", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_several_rows_match_the_reference(bits, group, out_f, in_f, batch, dtype):
    rt = random_code_runtime(bits, group, out_f, in_f, seed=out_f + in_f)
    x = torch.randn(batch, in_f, generator=torch.Generator().manual_seed(in_f + batch)).to("cuda", dtype)
    ref = x.float() @ split_decode_reference(rt).T
    got = split_gemv_cuda(rt, x)
    assert got.shape == (batch, out_f) and got.dtype == dtype
    tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    torch.testing.assert_close(got.float(), ref, rtol=tol, atol=tol * ref.abs().max().item())
    # each row as the one-row kernel computes it (the same decode, the same sums)
    one = torch.cat([split_gemv_cuda(rt, x[r:r + 1]) for r in range(batch)])
    torch.testing.assert_close(got.float(), one.float(), rtol=tol, atol=tol * ref.abs().max().item())


@needs_cuda
def test_several_rows_the_kernel_does_not_take_run_the_decode():
    rt = random_code_runtime(3.0, 16, 40, 20480, seed=3)  # wider than 16384
    for x in (torch.randn(3, 20480, device="cuda", dtype=torch.float16),
              torch.randn(2, 20480, device="cuda")):  # float32, several rows
        ref = x.float() @ split_decode_reference(rt).T
        got = split_gemv_cuda(rt, x)
        assert got.shape == ref.shape
        torch.testing.assert_close(got.float(), ref, rtol=1e-2, atol=1e-2 * ref.abs().max().item())


def test_eight_rows_of_tall_layers_take_two_launches(monkeypatch):
    """28672 x 8192 at eight rows needed about 275 KB of shared memory for the partial sums (an H200 refused the
    launch): the launcher's arithmetic routes it to two launches of four; 11008 x 4096 stays one launch."""
    import types

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(multi_processor_count=132))
    rt = split_runtime(layer(make_codec("pvq", 3.0, 8, group_size=16), 3, 128, seed=0), "cpu")
    x = torch.zeros(1, 1)
    assert not cuda_split._eight_rows_fit(dataclasses.replace(rt, out_features=28672, in_features=8192), x)
    assert cuda_split._eight_rows_fit(dataclasses.replace(rt, out_features=11008, in_features=4096), x)
