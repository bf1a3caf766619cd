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


@settings(max_examples=6, deadline=None)
@given(points=st.booleans(), rows=st.integers(1, 40), out_f=st.integers(1, 70), steps=st.integers(1, 2),
       block_rows=st.sampled_from(triton_rows.PREFILL_BLOCK_ROWS[:2]), pair=st.booleans(),
       bf16=st.sampled_from([False, True] if DEVICE == "cuda" else [False]), seed=st.integers(0, 2**16))
def test_fused_product_equals_decode_then_matmul(points, rows, out_f, steps, block_rows, pair, bf16, seed):
    """The product that decodes inside its K loop against the whole-layer decode's weight times x: the same
    rounded weights, float32 sums in another order (row counts and outputs that leave blocks part empty; with
    64 outputs a program, 2 or 4 row groups). bf16 on CUDA only: Triton's CPU interpreter multiplies bf16 dots by
    their raw bits."""
    if pair:
        out_f = 64 * (1 + out_f % 2) - out_f % 20
    rt = leaf_rows_from_split(code_runtime(2.0 if points else 3.0, 16, out_f, 128 * steps, seed=seed, device=DEVICE),
                              whole_points=points)
    dtype = torch.bfloat16 if bf16 else torch.float16
    x = torch.randn(rows, 128 * steps, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)
    ref = x.float() @ triton_rows.leaf_rows_decode_triton(rt, dtype).float().T
    got = triton_rows.leaf_rows_matmul_triton(rt, x, block_rows=block_rows, block_outputs=64 if pair else 32)
    assert got.dtype == dtype and got.shape == (rows, out_f)
    torch.testing.assert_close(got.float(), ref, rtol=2e-2 if bf16 else 2e-3, atol=1e-3 * ref.abs().max().item())


def test_fused_product_refusals():
    rt = leaf_rows_from_split(code_runtime(3.0, 16, 32, 128, device=DEVICE))
    for x, block_rows, message in ((torch.zeros(2, 128), 64, "fp16 or bf16"),
                                   (torch.zeros(2, 256, dtype=torch.float16), 64, "x must be [rows, 128]"),
                                   (torch.zeros(128, 4, dtype=torch.float16).T, 64, "unit inner stride"),
                                   (torch.zeros(2, 128, dtype=torch.float16), 48, "block_rows must be one of")):
        with pytest.raises(ValueError, match=re.escape(message)):
            triton_rows.leaf_rows_matmul_triton(rt, x.to(DEVICE), block_rows=block_rows)
    with pytest.raises(ValueError, match=re.escape("block_outputs must be 32, or 64 where the row groups (1) are even")):
        triton_rows.leaf_rows_matmul_triton(rt, torch.zeros(2, 128, dtype=torch.float16, device=DEVICE),
                                            block_outputs=64)
    empty = torch.zeros(0, 128, dtype=torch.float16, device=DEVICE)
    assert triton_rows.leaf_rows_matmul_triton(rt, empty).shape == (0, 32)
