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


@pytest.mark.parametrize("tile", [(2, 1, 4), (1, 4, 8), (4, 2, 8), (2, 8, 2)])
@pytest.mark.parametrize("bits,out_f,steps", [(3.0, 70, 3), (2.0, 33, 5), (3.125, 97, 1)])
def test_every_tile_decodes_the_reference(tile, bits, out_f, steps):
    """Tiles of several row groups and steps, where neither count divides the layer's (the tiles at the edges
    are part empty): bit for bit the reference, float32 and fp16."""
    rt = leaf_rows_from_split(code_runtime(bits, 16, out_f, 128 * steps, seed=out_f + steps, device=DEVICE))
    ref = leaf_rows_decode_reference(rt)
    tile = triton_rows.DecodeTile(*tile)
    assert torch.equal(triton_rows.leaf_rows_decode_triton(rt, tile=tile), ref)
    assert torch.equal(triton_rows.leaf_rows_decode_triton(rt, torch.float16, tile=tile), ref.half())


@pytest.mark.parametrize("kwargs,match", [({"steps": 3}, "power of two"), ({"num_warps": 0}, "power of two"),
                                          ({"row_groups": 8, "steps": 4}, "at most 16")])
def test_decode_tiles_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        triton_rows.DecodeTile(**kwargs)


def test_decode_refuses_other_dtypes():
    rt = leaf_rows_from_split(code_runtime(2.0, 16, 4, 128, device=DEVICE))
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        triton_rows.leaf_rows_decode_triton(rt, torch.int8)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
@pytest.mark.parametrize("tile", [(1, 1, 16, 4), (2, 2, 32, 4), (1, 4, 64, 8), (1, 1, 16, 4, 4), (2, 1, 32, 4, 2)])
@pytest.mark.parametrize("bits,out_f,steps,rows", [(3.0, 70, 3, 5), (2.0, 33, 5, 40), (3.125, 97, 1, 17)])
def test_the_in_gemm_decode_multiplies_the_decoded_weights(dtype, tol, tile, bits, out_f, steps, rows):
    """``x @ Q'^T`` with Q' decoded tile by tile inside the product: the reference's weights rounded to x's dtype,
    float32 sums, within one or two roundings of the output of the largest output; row, feature and step counts
    that leave the edge tiles part empty."""
    rt = leaf_rows_from_split(code_runtime(bits, 16, out_f, 128 * steps, seed=steps, device=DEVICE))
    x = torch.randn(rows, 128 * steps, generator=torch.Generator().manual_seed(out_f)).to(DEVICE, dtype)
    expected = x.float() @ leaf_rows_decode_reference(rt).to(dtype).float().T
    got = triton_rows.leaf_rows_dot_triton(rt, x, triton_rows.DotTile(*tile))
    assert got.dtype == dtype and got.shape == (rows, out_f)
    assert float((got.float() - expected).abs().max()) <= tol * float(expected.abs().max())


def test_the_in_gemm_decode_checks_its_input():
    rt = leaf_rows_from_split(code_runtime(2.0, 16, 4, 128, device=DEVICE))
    with pytest.raises(ValueError, match=r"fp16 or bf16 \[m, 128\]"):
        triton_rows.leaf_rows_dot_triton(rt, torch.zeros(2, 256, dtype=torch.float16, device=DEVICE))
    with pytest.raises(ValueError, match="block_m"):
        triton_rows.DotTile(block_m=48)
    with pytest.raises(ValueError, match="split_k"):
        triton_rows.DotTile(split_k=3)
    assert triton_rows.leaf_rows_dot_triton(rt, torch.zeros(0, 128, dtype=torch.float16, device=DEVICE)).shape == (0, 4)
