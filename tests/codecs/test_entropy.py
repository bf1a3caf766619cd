"""Lossless coding of symbol and byte streams: exact round trips, refused corruption."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvq.codecs import entropy as E


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 700), cols=st.integers(1, 4), span=st.sampled_from([1, 2, 3, 17, 255, 4099, 70000, 2**33]),
       low=st.integers(-(2**20), 2**20), seed=st.integers(0, 2**31))
def test_symbols_round_trip_exactly(n, cols, span, low, seed):
    rng = np.random.default_rng(seed)
    x = low + rng.integers(0, span, size=(n, cols)) if span > 1 else np.full((n, cols), low)
    y = E.decode(E.encode_symbols(x))
    assert y.shape == x.shape and y.dtype == np.int64 and np.array_equal(y, x)


@settings(max_examples=30, deadline=None)
@given(data=st.binary(max_size=3000), size=st.sampled_from([1, 2, 4]))
def test_bytes_round_trip_exactly(data, size):
    assert E.decode(E.encode_bytes(data, size)) == data


def test_ans_rate_is_close_to_the_empirical_entropy():
    rng = np.random.default_rng(1)
    x = np.round(rng.standard_normal(200_000) * 4).astype(np.int64)
    coded_bits = 8 * len(E.encode_symbols(x))
    h = E.entropy_bits(x)
    assert h < coded_bits < 1.005 * h  # the 16-bit model and 32-bit words cost little here


def test_fp16_planes_beat_raw_and_round_trip():
    rng = np.random.default_rng(2)
    data = (rng.standard_normal(20_000) * 0.01).astype(np.float16).tobytes()
    blob = E.encode_bytes(data, 2)
    assert len(blob) < 0.9 * len(data) and E.decode(blob) == data


@pytest.mark.parametrize("make", [lambda: E.encode_symbols(np.arange(5000) % 37),
                                  lambda: E.encode_bytes(bytes(range(256)) * 20, 1)])
def test_corrupt_or_truncated_streams_are_refused(make):
    blob = make()
    for pos in (0, 3, len(blob) // 2, len(blob) - 1):
        bad = bytearray(blob)
        bad[pos] ^= 0x10
        with pytest.raises(E.CodedStreamError):
            E.decode(bytes(bad))
    for cut in (0, 5, len(blob) - 1):
        with pytest.raises(E.CodedStreamError, match="truncated"):
            E.decode(blob[:cut])
    with pytest.raises(E.CodedStreamError):
        E.decode(blob + b"\0")
