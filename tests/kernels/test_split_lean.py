"""The split tables of :mod:`pvq.kernels.split_lean` (what the CUDA one-row kernel reads): buckets,
split pairs and leaves checked exhaustively against the split order; which layers they take.
"""

import pytest
import torch

from pvq.codecs import make_codec
from pvq.codecs.pyramid_counts import pyramid_count
from pvq.codecs.pyramid_split import leaf_points, split_offsets
from pvq.kernels.split_lean import bucket_shift, lean_supported, lean_tables
from pvq.kernels.split_runtime import split_runtime
from quantized_layers import random_layer as layer


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
    assert not lean_supported(split_runtime(q, "cpu"))
