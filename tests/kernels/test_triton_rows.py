"""The Triton whole-layer decode of the row-interleaved leaf layout against the reference, bit for bit (CPU:
Triton's interpreter; CUDA: the compiled kernel), in float32 and rounded once to fp16 and bf16."""

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


@settings(max_examples=8, deadline=None)
@given(bits=st.sampled_from([1.5, 2.0, 3.0]), out_f=st.integers(1, 70), steps=st.integers(1, 2), seed=st.integers(0, 2**16),
       points=st.booleans())
def test_quad_order_decode_equals_the_reference(bits, out_f, steps, seed, points):
    """The quad order (each field's row and vector from its lane and slot): the same weights, stored in place."""
    rt = leaf_rows_from_split(code_runtime(bits, 16, out_f, 128 * steps, seed=seed, device=DEVICE),
                              whole_points=points and bits <= 2.0, quad_swapped=True)
    ref = leaf_rows_decode_reference(rt)
    assert torch.equal(triton_rows.leaf_rows_decode_triton(rt), ref)
    assert torch.equal(triton_rows.leaf_rows_decode_triton(rt, torch.bfloat16), ref.to(torch.bfloat16))


def test_decode_refuses_other_dtypes():
    rt = leaf_rows_from_split(code_runtime(2.0, 16, 4, 128, device=DEVICE))
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        triton_rows.leaf_rows_decode_triton(rt, torch.int8)


@settings(max_examples=6, deadline=None)
@given(bits=st.sampled_from([2.0, 3.0]), out_f=st.integers(1, 40), steps=st.integers(1, 6), points=st.booleans(),
       quads=st.booleans(), seed=st.integers(0, 2**16))
def test_decode_into_a_callers_buffer_gives_the_layer(bits, out_f, steps, points, quads, seed):
    """``out=``: the layer written into the caller's buffer (every element: it starts as NaN) and that buffer
    returned."""
    rt = leaf_rows_from_split(code_runtime(bits, 16, out_f, 128 * steps, seed=seed, device=DEVICE),
                              whole_points=points and bits <= 2.0, quad_swapped=quads)
    ref = leaf_rows_decode_reference(rt).to(torch.float16)
    buffer = torch.full((out_f, 128 * steps), float("nan"), dtype=torch.float16, device=DEVICE)
    got = triton_rows.leaf_rows_decode_triton(rt, torch.float16, buffer)
    assert got.data_ptr() == buffer.data_ptr()
    assert torch.equal(buffer, ref)


def test_decode_refuses_a_buffer_of_another_shape_or_dtype():
    rt = leaf_rows_from_split(code_runtime(2.0, 16, 4, 128, device=DEVICE))
    for wrong in (torch.empty(4, 256, dtype=torch.float16), torch.empty(4, 128, dtype=torch.float32),
                  torch.empty(128, 4, dtype=torch.float16).T):
        with pytest.raises(ValueError, match="out must be a contiguous"):
            triton_rows.leaf_rows_decode_triton(rt, torch.float16, wrong.to(DEVICE))
