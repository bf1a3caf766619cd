import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pvq.codecs import CodecError
from pvq.codecs import bigint
from pvq.codecs.packing import (
    ints_to_limbs,
    limbs_needed,
    limbs_to_ints,
    pack_bits,
    pack_bits_reference,
    pack_limbs,
    pack_radix,
    pack_radix_reference,
    radix_bits,
    unpack_bits,
    unpack_limbs,
    unpack_radix,
)


# whole-byte runs in one int64 word (1-8, 10, 12, 16, 20, 24, 32, 40, 48, 56) and the bit-matrix path (the rest)
@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 16, 20, 24, 31, 32, 33, 40, 47, 48, 56, 63])
@pytest.mark.parametrize("count", [0, 1, 7, 37, 1000])
def test_fixed_width_round_trip_bit_exact(width, count):
    rng = random.Random(width * 7919 + count)
    values = [rng.getrandbits(width) for _ in range(count)]
    packed = pack_bits(torch.tensor(values, dtype=torch.int64), width)
    assert packed.numel() == (count * width + 7) // 8
    assert bytes(packed.tolist()) == pack_bits_reference(values, width)
    assert unpack_bits(packed, width, count).tolist() == values


@pytest.mark.parametrize("width", [1, 31, 32, 33, 64, 65, 96, 97, 200, 568])
def test_wide_fields_round_trip(width):
    rng = random.Random(width)
    values = [rng.getrandbits(width) for _ in range(19)] + [0, (1 << width) - 1]
    limbs = ints_to_limbs(values, limbs_needed(width))
    packed = pack_limbs(limbs, width)
    assert packed.numel() == (len(values) * width + 7) // 8
    assert bytes(packed.tolist()) == pack_bits_reference(values, width)
    assert limbs_to_ints(unpack_limbs(packed, width, len(values))) == values


@settings(max_examples=60, deadline=None)
@given(radix=st.integers(2, 5000), digits=st.lists(st.integers(0, 10**9), max_size=300))
def test_mixed_radix_round_trip_property(radix, digits):
    digits = [d % radix for d in digits]
    packed = pack_radix(torch.tensor(digits, dtype=torch.int64), radix)
    assert bytes(packed.tolist()) == pack_radix_reference(digits, radix)
    assert packed.numel() * 8 - radix_bits(len(digits), radix) < 16  # two byte-aligned parts at most
    assert unpack_radix(packed, radix, len(digits)).tolist() == digits


def test_mixed_radix_realizes_fractional_rate():
    # 3 levels: log2(3) = 1.585 bits, not 2
    assert radix_bits(10_000, 3) / 10_000 < 1.60
    assert radix_bits(10_000, 5) / 10_000 < 2.34  # log2(5) = 2.32, vs 3 packed plainly


def test_packing_rejects_out_of_range():
    with pytest.raises(CodecError):
        pack_bits(torch.tensor([8]), 3)
    with pytest.raises(CodecError):
        pack_bits(torch.tensor([-1]), 3)
    with pytest.raises(CodecError):
        pack_bits(torch.tensor([1]), 0)
    with pytest.raises(CodecError):
        pack_radix(torch.tensor([3]), 3)
    with pytest.raises(CodecError):
        pack_limbs(ints_to_limbs([1 << 40], 2), 40)
    with pytest.raises(CodecError):
        unpack_bits(torch.zeros(1, dtype=torch.uint8), 5, 4)


def test_bigint_arithmetic_matches_python_ints():
    rng = random.Random(11)
    values = [rng.getrandbits(rng.randint(1, 300)) for _ in range(50)]
    limbs = bigint.from_ints(values, 10)
    assert bigint.to_ints(limbs) == values
    assert bigint.to_ints(bigint.mul_small(limbs, 12345)) == [v * 12345 for v in values]
    small = torch.tensor([rng.getrandbits(31) for _ in values])
    assert bigint.to_ints(bigint.add_small(limbs, small)) == [v + int(s) for v, s in zip(values, small)]
    q, r = bigint.divmod_small(limbs, 997)
    assert bigint.to_ints(q) == [v // 997 for v in values] and r.tolist() == [v % 997 for v in values]
    other = bigint.from_ints(values[::-1], 10)
    cmp = bigint.compare(limbs, other).tolist()
    assert cmp == [(a > b) - (a < b) for a, b in zip(values, values[::-1])]
    # normalize resolves borrows: (a + b) - b == a
    assert bigint.to_ints(bigint.normalize(bigint.normalize(limbs + other) - other)) == values


def test_64_bit_fields_take_any_int64():
    values = [-1, 5, 1 << 62, -(1 << 63), 123456789]
    packed = pack_bits(torch.tensor(values, dtype=torch.int64), 64)
    assert bytes(packed.tolist()) == pack_bits_reference([v % (1 << 64) for v in values], 64)
    assert unpack_bits(packed, 64, len(values)).tolist() == values
