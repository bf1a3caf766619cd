"""The Triton whole-layer decode of the row-interleaved leaf layout against the reference, bit for bit (CPU:
Triton's interpreter; CUDA: the compiled kernel), in float32 and rounded once to fp16 and bf16."""

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pvq.kernels.leaf_rows import leaf_rows_decode_reference, leaf_rows_from_split
from test_leaf_layout import code_runtime

triton_rows = pytest.importorskip("pvq.kernels.triton_rows")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@settings(max_examples=12, deadline=None)
@given(bits=st.sampled_from([1.5, 2.0, 2.5, 3.0, 3.125]), out_f=st.integers(1, 70), steps=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_decode_equals_the_reference(bits, out_f, steps, seed):
    """Rates whose fields are 18 to 32 bits wide (3.125 bits: 32, every field's high bits in a second word but
    those that end a word), row counts that leave the last row group part empty."""
    rt = leaf_rows_from_split(code_runtime(bits, 16, out_f, 128 * steps, seed=seed, device=DEVICE))
    ref = leaf_rows_decode_reference(rt)
    assert torch.equal(triton_rows.leaf_rows_decode_triton(rt), ref)
    for dtype in (torch.float16, torch.bfloat16):  # the float32 values rounded to nearest once
        assert torch.equal(triton_rows.leaf_rows_decode_triton(rt, dtype), ref.to(dtype))


@settings(max_examples=8, deadline=None)
@given(bits=st.sampled_from([1.5, 2.0]), out_f=st.integers(1, 70), steps=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_whole_point_decode_equals_the_reference(bits, out_f, steps, seed):
    """Whole points: 16-bit fields, one table word of nibbles a vector."""
    rt = leaf_rows_from_split(code_runtime(bits, 16, out_f, 128 * steps, seed=seed, device=DEVICE), whole_points=True)
    ref = leaf_rows_decode_reference(rt)
    assert torch.equal(triton_rows.leaf_rows_decode_triton(rt), ref)
    for dtype in (torch.float16, torch.bfloat16):
        assert torch.equal(triton_rows.leaf_rows_decode_triton(rt, dtype), ref.to(dtype))


def test_decode_refuses_other_dtypes():
    rt = leaf_rows_from_split(code_runtime(2.0, 16, 4, 128, device=DEVICE))
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        triton_rows.leaf_rows_decode_triton(rt, torch.int8)


@settings(max_examples=8, deadline=None)
@given(points=st.booleans(), out_f=st.integers(1, 140), steps=st.integers(1, 2), seed=st.integers(0, 2**16),
       data=st.data())
def test_decode_of_rows_into_a_buffer(points, out_f, steps, seed, data):
    """Rows ``r0 .. r1`` decoded into a reused buffer equal the reference's rows bit for bit, and the rest of a
    larger buffer is left as it was."""
    rt = leaf_rows_from_split(code_runtime(2.0 if points else 3.0, 16, out_f, 128 * steps, seed=seed, device=DEVICE),
                              whole_points=points)
    r0 = 32 * data.draw(st.integers(0, (out_f - 1) // 32))
    r1 = data.draw(st.integers(r0, out_f))
    buffer = torch.full((140, 128 * steps), 7.0, dtype=torch.float16, device=DEVICE)
    got = triton_rows.leaf_rows_decode_triton(rt, torch.float16, (r0, r1), buffer[: r1 - r0])
    assert got.data_ptr() == buffer.data_ptr() or r1 == r0
    assert torch.equal(got, leaf_rows_decode_reference(rt, (r0, r1)).to(torch.float16))
    assert bool((buffer[r1 - r0:] == 7.0).all())


def test_decode_of_rows_refusals():
    rt = leaf_rows_from_split(code_runtime(3.0, 16, 70, 128, device=DEVICE))
    for rows, out, message in (((16, 40), None, "r0 a multiple of 32"), ((0, 71), None, "within 0 .. 70"),
                               ((0, 32), torch.empty(33, 128, dtype=torch.float16), "contiguous torch.float16 tensor"),
                               ((0, 32), torch.empty(32, 128), "contiguous torch.float16 tensor")):
        with pytest.raises(ValueError, match=re.escape(message)):
            triton_rows.leaf_rows_decode_triton(rt, torch.float16, rows, None if out is None else out.to(DEVICE))


@settings(max_examples=6, deadline=None)
@given(points=st.booleans(), rows=st.integers(1, 20), out_f=st.integers(1, 140), chunk=st.sampled_from([32, 64, 96]),
       seed=st.integers(0, 2**16))
def test_chunked_product_equals_decode_then_matmul(points, rows, out_f, chunk, seed):
    """Chunks of 32 to 96 outputs (the last one short) against one whole-layer decode and one product."""
    rt = leaf_rows_from_split(code_runtime(2.0 if points else 3.0, 16, out_f, 256, seed=seed, device=DEVICE),
                              whole_points=points)
    x = torch.randn(2, rows, 256, generator=torch.Generator().manual_seed(seed)).to(DEVICE, torch.float16)
    ref = x.float() @ triton_rows.leaf_rows_decode_triton(rt, torch.float16).float().T
    got = triton_rows.leaf_rows_chunked_product(rt, x, chunk_rows=chunk)
    assert got.dtype == torch.float16 and got.shape == (2, rows, out_f)
    torch.testing.assert_close(got.float(), ref, rtol=2e-3, atol=1e-3 * ref.abs().max().item())
    with pytest.raises(ValueError, match="chunk_rows must be a positive multiple of 32"):
        triton_rows.leaf_rows_chunked_product(rt, x, chunk_rows=48)
