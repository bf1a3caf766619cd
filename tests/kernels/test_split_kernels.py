"""The split-order PVQ kernels against their PyTorch references on random layers of awkward sizes.

On CPU the kernels run under ``TRITON_INTERPRET=1`` (set by ``tests/conftest.py``): decodes are
bit-exact in float32, fused matmuls equal the fp16-rounded reference to float32 summation order.
"""

import pytest
import torch

from pvq.codecs import make_codec
from pvq.codecs.bigint import to_int64
from pvq.codecs.pyramid_split import split_unrank
from pvq.kernels import kernel_family
from pvq.kernels.backend import KERNEL_FAMILIES
from pvq.kernels.split_runtime import (
    split_codes_reference,
    split_decode_reference,
    split_matmul_reference,
    split_points_reference,
    split_runtime,
    split_runtime_supports,
)
from quantized_layers import random_layer as layer

triton_split = pytest.importorskip("pvq.kernels.triton_split", reason="Triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SPLIT_FAMILY = next(f for f in KERNEL_FAMILIES if f.name == "pvq-split")


# D = 4, 8, 16; codes of 8 to 54 bits (one, two and three int32 words; int32 and int64 splits);
# sizes that are no multiple of the tiles, a bitstream whose length is no multiple of 4 bytes
CASES = [(4, 3.0, 5, 9, 20), (8, 1.5, 5, 5, 40), (8, 3.0, 3, 37, 24), (8, 4.0, 4, 6, 96),
         (16, 3.0, 3, 19, 48), (16, 3.6, 5, 7, 80)]


# The reference rounds to float32 three times (level * scale, times 1/|y| from a table rounded once,
# times y), the codec's decode once from float64: at most about 5 half-ulps apart, relative.
REFERENCE_RTOL = 5 * 2.0**-24


@pytest.mark.parametrize("dim, bits, group, out_f, in_f", CASES)
def test_split_decode_is_bit_exact(dim, bits, group, out_f, in_f):
    q = layer(make_codec("pvq", bits, dim, group_size=group), out_f, in_f, seed=dim + out_f)
    assert q.codec.index_order == "split" and split_runtime_supports(q.codec)
    # the Triton family covers it (on a CUDA machine a CUDA family that also does comes first in the order)
    assert SPLIT_FAMILY.supports(q.codec)
    assert torch.cuda.is_available() or kernel_family(q.codec) is SPLIT_FAMILY
    rt = split_runtime(q, DEVICE)
    cpu = split_runtime(q, "cpu")
    # the codes as Python integers from the stored bytes (no tensor shifts): what every reader must give
    width, n = q.codec.code_bits, rt.num_vectors
    stream = int.from_bytes(bytes(q.packed_codes.tolist()), "little")
    truth = [(stream >> (i * width)) & ((1 << width) - 1) for i in range(n)]
    for runtime in (cpu, rt):
        assert split_codes_reference(runtime).cpu().tolist() == truth, f"codes read on {runtime.words.device}"
    codes = q.codes()
    assert (to_int64(codes["index"]) * q.codec.gain.num_levels + codes["gain"]).tolist() == truth  # the codec's unpack
    # the reference reads the codec's own codes and points, on the kernels' device too (exact integers)
    for runtime in (cpu, rt):
        points, gain = split_points_reference(runtime)
        assert torch.equal(gain.cpu(), codes["gain"])
        assert torch.equal(points.cpu(), q.codec.points(codes["index"]))
    ref = split_decode_reference(rt)
    # the same float32 products on every device (elementwise IEEE multiplies: no sums, no TF32)
    assert torch.equal(ref.cpu(), split_decode_reference(cpu))
    # against the codec's float64 decode rounded once: a few float32 roundings apart, relative to each weight
    # (a bound that scales with the weight, where an absolute 2e-6 did not)
    torch.testing.assert_close(ref.cpu(), q.rotated_weight(), rtol=REFERENCE_RTOL, atol=0)
    assert torch.equal(triton_split.split_decode(rt, block=8), ref)
    assert torch.equal(triton_split.split_decode(rt, torch.float16, block=16), ref.half())


@pytest.mark.parametrize("dim, bits, group, out_f, in_f", CASES)
@pytest.mark.parametrize("batch", [1, 3, 16])
def test_split_matmul_matches_the_reference(dim, bits, group, out_f, in_f, batch):
    q = layer(make_codec("pvq", bits, dim, group_size=group), out_f, in_f, seed=batch + dim)
    rt = split_runtime(q, DEVICE)
    x = torch.randn(batch, in_f, generator=torch.Generator().manual_seed(batch)).to(DEVICE)
    ref = split_matmul_reference(rt, x)
    for split_k in (1, 3):
        got = triton_split.split_matmul(rt, x, block_o=16, nv=2, split_k=split_k)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_code_reader_handles_every_bit_offset():
    # 61-bit codes: every offset 0..31 within a word, codes spanning three words
    from pvq.codecs.packing import pack_bits

    values = torch.randint(0, 1 << 61, (64,), generator=torch.Generator().manual_seed(3))
    packed = pack_bits(values, 61)

    class Stub:  # a runtime carrying just the bitstream
        pass

    rt = Stub()
    rt.words, rt.code_bits, rt.out_features, rt.in_features, rt.dim = None, 61, 64, 8, 8
    from pvq.kernels.split_runtime import _words

    rt.words = _words(packed)
    rt.num_vectors = 64
    assert torch.equal(split_codes_reference(rt), values)


def test_fischer_order_layers_keep_the_old_kernels():
    q = layer(make_codec("pvq", 3.0, 8, group_size=4, index_order="fischer"), 5, 32, seed=0)
    assert not split_runtime_supports(q.codec) and kernel_family(q.codec).name == "pvq-fischer"
    with pytest.raises(Exception, match="index_order='split'"):
        split_runtime(q, "cpu")


def test_split_unrank_of_codec_points_round_trip():
    codec = make_codec("pvq", 3.0, 16, group_size=4)
    q = layer(codec, 4, 64, seed=1)
    points, _ = split_points_reference(split_runtime(q, "cpu"))
    from pvq.codecs.pyramid_split import split_rank

    assert torch.equal(split_unrank(split_rank(points, codec.pulses), 16, codec.pulses), points)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_split_matmul_in_half_precision(dtype):
    if dtype == torch.bfloat16 and DEVICE == "cpu":
        pytest.skip("Triton's interpreter computes bf16 dots wrongly (numpy has no bf16); runs on CUDA")
    q = layer(make_codec("pvq", 3.0, 8, group_size=4), 21, 64, seed=7)
    rt = split_runtime(q, DEVICE)
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0)).to(DEVICE, dtype)
    got = triton_split.split_matmul(rt, x, block_o=16, nv=4, split_k=2)
    torch.testing.assert_close(got, split_matmul_reference(rt, x), rtol=1e-3, atol=1e-3)


def test_split_runtime_reads_the_stored_codes_in_place():
    q = layer(make_codec("pvq", 3.0, 8, group_size=4), 8, 64, seed=2)  # 64 vectors x 23 bits: 184 bytes
    rt = split_runtime(q)
    assert q.packed_codes.numel() % 4 == 0 and rt.words.data_ptr() == q.packed_codes.data_ptr()
    odd = layer(make_codec("pvq", 3.0, 8, group_size=3), 3, 24, seed=2)  # 9 x 23 bits: 26 bytes, padded copy
    assert odd.packed_codes.numel() % 4 != 0
    assert split_runtime(odd).words.numel() * 4 == (odd.packed_codes.numel() + 3) // 4 * 4
