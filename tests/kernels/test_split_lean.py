"""The lean one-row split kernel (D = 8, 2 and 3 bits) against the split references.

Its decode is checked bit for bit through one-hot inputs (``e_i @ Q'^T`` is column i of ``Q'``: one
product per weight, no sums), its product against the fp32 reference on awkward sizes.
"""

import pytest
import torch

from pvq.codecs import make_codec
from pvq.codecs.pyramid_counts import pyramid_count
from pvq.codecs.pyramid_split import leaf_points, split_offsets
from pvq.kernels.split_lean import bucket_shift, lean_supported, lean_tables
from pvq.kernels.split_runtime import split_decode_reference, split_runtime
from quantized_layers import random_layer as layer

lean = pytest.importorskip("pvq.kernels.triton_split_lean", reason="Triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# bits -> K (L): 1.5 -> 3, 2 -> 5 (2), 2.5 -> 8, 3 -> 11 (4): every K the kernel takes at D = 8
CASES = [(1.5, 5, 5, 40), (2.0, 3, 3, 24), (2.5, 7, 19, 56), (3.0, 3, 37, 24), (3.0, 4, 1, 32), (3.0, 2, 21, 272)]


@pytest.mark.parametrize("bits", [1.5, 2.0, 2.5, 3.0])
def test_tables_hold_the_splits_and_the_leaves(bits):
    k = make_codec("pvq", bits, 8, group_size=16).pulses
    buckets, pair, leafn = (t.cpu() for t in lean_tables(k, "cpu"))
    offsets = split_offsets(8, k)[k]
    _, leaf_off = leaf_points(k)
    lo, hi = pair[:, 0], pair[:, 1]
    # every index's bucket gives its j (exhaustive: N(8, K) <= 1.3 M)
    r = torch.arange(pyramid_count(8, k))
    want = torch.searchsorted(torch.tensor(offsets[1 : k + 1]), r, right=True)
    entry = buckets[r >> bucket_shift(k)]
    assert torch.equal((entry & 0xFFFFFFFF) + (r >= entry >> 32).long(), want)
    for j in range(k + 1):
        div = pyramid_count(4, k - j)
        assert lo[j] & 0xFFFFFFFF == offsets[j] and lo[j] >> 32 == div
        inv = torch.tensor([int(hi[j] & 0xFFFFFFFF)], dtype=torch.int64).to(torch.int32).view(torch.float32)
        assert inv.item() == torch.tensor(1.0 / div, dtype=torch.float32).item()
        assert (hi[j] >> 32) & 0xFFFF == leaf_off[j] and hi[j] >> 48 == leaf_off[k - j]
    pts, _ = leaf_points(k)
    word = (leafn & 0xFFFFFFFF).to(torch.int32)
    coords = torch.stack([(word << (24 - 8 * t)) >> 24 for t in range(4)], 1)
    assert torch.equal(coords.long(), pts) and torch.equal(leafn >> 32, (pts * pts).sum(1))


def test_supported_layers():
    for bits, ok in ((2.0, True), (3.0, True), (4.0, False)):
        q = layer(make_codec("pvq", bits, 8, group_size=16), 3, 128, seed=0)  # K = 5, 11, 22
        assert lean_supported(split_runtime(q, "cpu")) is ok
    q = layer(make_codec("pvq", 3.0, 16, group_size=2), 3, 32, seed=0)
    rt = split_runtime(q, "cpu")
    assert not lean_supported(rt)
    with pytest.raises(ValueError, match="use split_matmul"):
        lean.split_gemv_lean(rt, torch.zeros(1, 32))


@pytest.mark.parametrize("bits, group, out_f, in_f", CASES)
def test_decode_is_bit_exact_through_one_hot_inputs(bits, group, out_f, in_f):
    q = layer(make_codec("pvq", bits, 8, group_size=group), out_f, in_f, seed=out_f + in_f)
    rt = split_runtime(q, DEVICE)
    ref = split_decode_reference(rt)
    eye = torch.eye(in_f, device=DEVICE)
    for buckets in (True, False):
        got = torch.cat([lean.split_gemv_lean(rt, eye[i:i + 1], split_k=1, buckets=buckets) for i in range(in_f)])
        assert torch.equal(got.T, ref)


@pytest.mark.parametrize("bits, group, out_f, in_f", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_product_matches_the_reference(bits, group, out_f, in_f, dtype):
    q = layer(make_codec("pvq", bits, 8, group_size=group), out_f, in_f, seed=out_f)
    rt = split_runtime(q, DEVICE)
    x = torch.randn(1, in_f, generator=torch.Generator().manual_seed(in_f)).to(DEVICE, dtype)
    ref = x.float() @ split_decode_reference(rt).T  # the kernel multiplies float32 weights (not rounded to x's dtype)
    for block_o, nv, split_k, buckets in ((16, 2, 1, True), (16, 4, 3, False), (32, 16, 2, True)):
        got = lean.split_gemv_lean(rt, x, block_o=block_o, nv=nv, split_k=split_k, buckets=buckets)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_rejects_a_batch():
    q = layer(make_codec("pvq", 3.0, 8, group_size=2), 3, 16, seed=0)
    with pytest.raises(ValueError, match=r"x \[1, 16\]"):
        lean.split_gemv_lean(split_runtime(q, DEVICE), torch.zeros(2, 16, device=DEVICE))
