"""Bit-exact packing of integer codes into bytes.

* Fixed width: ``pack_bits`` / ``unpack_bits`` store non-negative integers of
  ``width`` bits (1..64) back to back, little-endian bit order, into a uint8
  tensor of ``ceil(count * width / 8)`` bytes.
* Wide fields: ``pack_limbs`` / ``unpack_limbs`` store integers wider than 64
  bits, given as little-endian 32-bit limbs ``[n, L]`` (int64 tensors holding
  values in [0, 2^32)), as fields of exactly ``width`` bits each.
* Mixed radix: ``pack_mixed_radix`` / ``unpack_mixed_radix`` combine digits
  ``d_j`` in [0, r_j) into one integer sum_j d_j * prod_{i<j} r_i per chunk,
  so that a code of R levels costs log2(R) bits on average instead of
  ceil(log2(R)). Chunks are sized so each combined integer fits in 63 bits.

Every vectorized function has a plain Python-int reference
(``*_reference``) used by the tests.
"""

from __future__ import annotations

import math

import torch

from .base import CodecError
from .bigint import LIMB_BITS, LIMB_MASK


def _check_width(width: int, max_width: int) -> None:
    if not isinstance(width, int) or not 1 <= width <= max_width:
        raise CodecError(f"bit width must be an integer in [1, {max_width}], got {width!r}")


def packed_nbytes(count: int, width: int) -> int:
    """Bytes taken by ``count`` fields of ``width`` bits."""
    return (count * width + 7) // 8


# ------------------------------------------------------------------ fixed width


def pack_bits(values: torch.Tensor, width: int) -> torch.Tensor:
    """Pack non-negative integers ``values`` (any shape) of ``width`` bits into uint8.

    Returns a 1-D uint8 tensor of ``ceil(values.numel() * width / 8)`` bytes.
    """
    _check_width(width, 64)
    v = values.reshape(-1).to(torch.int64)
    if v.numel() and width < 64 and (int(v.min()) < 0 or int(v.max()) >= (1 << width)):
        raise CodecError(f"values must lie in [0, 2^{width}) to pack in {width} bits")
    n = v.numel()
    # bit matrix [n, width], little-endian within each field
    shifts = torch.arange(width, dtype=torch.int64, device=v.device)
    bits = ((v.unsqueeze(1) >> shifts) & 1).to(torch.uint8).reshape(-1)
    return _bits_to_bytes(bits, packed_nbytes(n, width))


def unpack_bits(data: torch.Tensor, width: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``count`` int64 values of ``width`` bits."""
    _check_width(width, 64)
    need = packed_nbytes(count, width)
    if data.dtype != torch.uint8 or data.numel() < need:
        raise CodecError(f"need a uint8 tensor of at least {need} bytes, got {data.numel()} {data.dtype}")
    bits = _bytes_to_bits(data.reshape(-1)[:need])[: count * width].view(count, width).to(torch.int64)
    shifts = torch.arange(width, dtype=torch.int64, device=data.device)
    return (bits << shifts).sum(dim=1)


def _bits_to_bytes(bits: torch.Tensor, nbytes: int) -> torch.Tensor:
    pad = nbytes * 8 - bits.numel()
    if pad:
        bits = torch.cat([bits, bits.new_zeros(pad)])
    weights = (1 << torch.arange(8, device=bits.device)).to(torch.uint8)
    return (bits.view(nbytes, 8) * weights).sum(dim=1, dtype=torch.int64).to(torch.uint8)


def _bytes_to_bits(data: torch.Tensor) -> torch.Tensor:
    shifts = torch.arange(8, device=data.device)
    return ((data.to(torch.int64).unsqueeze(1) >> shifts) & 1).to(torch.uint8).reshape(-1)


def pack_bits_reference(values: list[int], width: int) -> bytes:
    """Plain reference of :func:`pack_bits` with Python ints."""
    acc = 0
    for i, v in enumerate(values):
        acc |= int(v) << (i * width)
    return acc.to_bytes(packed_nbytes(len(values), width), "little")


# ------------------------------------------------------------------ wide fields (limbs)


def limbs_needed(width: int) -> int:
    return max(1, -(-width // LIMB_BITS))


def pack_limbs(limbs: torch.Tensor, width: int) -> torch.Tensor:
    """Pack integers given as 32-bit limbs ``[n, L]`` into fields of ``width`` bits.

    Limb ``j`` holds bits ``32j .. 32j+31``. Bits at or above ``width`` must be 0.
    Returns 1-D uint8 of ``ceil(n * width / 8)`` bytes.
    """
    if width < 1:
        raise CodecError(f"bit width must be >= 1, got {width}")
    if limbs.dim() != 2:
        raise CodecError(f"limbs must have shape [n, L], got {tuple(limbs.shape)}")
    n, nl = limbs.shape
    if nl * LIMB_BITS < width:
        limbs = torch.nn.functional.pad(limbs, (0, limbs_needed(width) - nl))
        nl = limbs.shape[1]
    shifts = torch.arange(LIMB_BITS, dtype=torch.int64, device=limbs.device)
    bits = ((limbs.to(torch.int64).unsqueeze(2) >> shifts) & 1).reshape(n, nl * LIMB_BITS)
    if n and bits[:, width:].any():
        raise CodecError(f"an integer does not fit in {width} bits")
    bits = bits[:, :width].to(torch.uint8).reshape(-1)
    return _bits_to_bytes(bits, packed_nbytes(n, width))


def unpack_limbs(data: torch.Tensor, width: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_limbs`: ``[count, limbs_needed(width)]`` int64 limbs."""
    need = packed_nbytes(count, width)
    if data.dtype != torch.uint8 or data.numel() < need:
        raise CodecError(f"need a uint8 tensor of at least {need} bytes, got {data.numel()} {data.dtype}")
    nl = limbs_needed(width)
    bits = _bytes_to_bits(data.reshape(-1)[:need])[: count * width].view(count, width)
    bits = torch.nn.functional.pad(bits, (0, nl * LIMB_BITS - width)).view(count, nl, LIMB_BITS)
    shifts = torch.arange(LIMB_BITS, dtype=torch.int64, device=data.device)
    return (bits.to(torch.int64) << shifts).sum(dim=2)


def ints_to_limbs(values: list[int], num_limbs: int) -> torch.Tensor:
    """Python ints -> ``[n, num_limbs]`` int64 limb tensor (reference helper)."""
    out = torch.zeros(len(values), num_limbs, dtype=torch.int64)
    for i, v in enumerate(values):
        if v < 0 or v >> (num_limbs * LIMB_BITS):
            raise CodecError(f"integer {v} does not fit in {num_limbs} limbs")
        for j in range(num_limbs):
            out[i, j] = (v >> (LIMB_BITS * j)) & LIMB_MASK
    return out


def limbs_to_ints(limbs: torch.Tensor) -> list[int]:
    """``[n, L]`` limb tensor -> Python ints (reference helper)."""
    rows = limbs.to(torch.int64).tolist()
    return [sum(int(x) << (LIMB_BITS * j) for j, x in enumerate(r)) for r in rows]


# ------------------------------------------------------------------ mixed radix


def mixed_radix_chunk(radix: int) -> int:
    """Digits of one radix combined per 63-bit chunk: largest c with radix^c < 2^63."""
    if radix < 2:
        raise CodecError(f"radix must be >= 2, got {radix}")
    c = max(1, int(63 / math.log2(radix)))
    while radix**c >= 1 << 63:
        c -= 1
    while radix ** (c + 1) < 1 << 63:
        c += 1
    return c


def mixed_radix_bits(count: int, radix: int) -> int:
    """Exact number of bits :func:`pack_mixed_radix` uses for ``count`` digits."""
    c = mixed_radix_chunk(radix)
    full, rest = divmod(count, c)
    width = (radix**c - 1).bit_length()
    bits = full * width
    if rest:
        bits += (radix**rest - 1).bit_length()
    return bits


def pack_mixed_radix(digits: torch.Tensor, radix: int) -> torch.Tensor:
    """Pack digits in [0, radix) (any shape) at about log2(radix) bits each.

    Consecutive digits are combined into chunks of ``mixed_radix_chunk(radix)``
    digits (a 63-bit integer each, digit 0 least significant), and each chunk is
    stored in exactly ``bit_length(radix^c - 1)`` bits; a shorter last chunk
    takes only the bits it needs. Returns 1-D uint8.
    """
    d = digits.reshape(-1).to(torch.int64)
    if d.numel() and (int(d.min()) < 0 or int(d.max()) >= radix):
        raise CodecError(f"digits must lie in [0, {radix})")
    c = mixed_radix_chunk(radix)
    full, rest = divmod(d.numel(), c)
    pieces_bits = []
    if full:
        powers = torch.tensor([radix**j for j in range(c)], dtype=torch.int64, device=d.device)
        combined = (d[: full * c].view(full, c) * powers).sum(dim=1)
        pieces_bits.append(_int_bits(combined, (radix**c - 1).bit_length()))
    if rest:
        powers = torch.tensor([radix**j for j in range(rest)], dtype=torch.int64, device=d.device)
        combined = (d[full * c :].view(1, rest) * powers).sum(dim=1)
        pieces_bits.append(_int_bits(combined, (radix**rest - 1).bit_length()))
    bits = torch.cat(pieces_bits) if pieces_bits else torch.zeros(0, dtype=torch.uint8, device=d.device)
    return _bits_to_bytes(bits, (bits.numel() + 7) // 8)


def unpack_mixed_radix(data: torch.Tensor, radix: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_mixed_radix`: ``count`` int64 digits."""
    total = mixed_radix_bits(count, radix)
    if data.dtype != torch.uint8 or data.numel() * 8 < total:
        raise CodecError(f"need a uint8 tensor of at least {(total + 7) // 8} bytes")
    bits = _bytes_to_bits(data.reshape(-1))[:total]
    c = mixed_radix_chunk(radix)
    full, rest = divmod(count, c)
    out = []
    w = (radix**c - 1).bit_length()
    if full:
        combined = _bits_int(bits[: full * w].view(full, w))
        out.append(_split_digits(combined, radix, c))
    if rest:
        wr = (radix**rest - 1).bit_length()
        combined = _bits_int(bits[full * w : full * w + wr].view(1, wr))
        out.append(_split_digits(combined, radix, rest))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64, device=data.device)


def _int_bits(v: torch.Tensor, width: int) -> torch.Tensor:
    shifts = torch.arange(width, dtype=torch.int64, device=v.device)
    return ((v.unsqueeze(1) >> shifts) & 1).to(torch.uint8).reshape(-1)


def _bits_int(bits: torch.Tensor) -> torch.Tensor:
    shifts = torch.arange(bits.shape[1], dtype=torch.int64, device=bits.device)
    return (bits.to(torch.int64) << shifts).sum(dim=1)


def _split_digits(combined: torch.Tensor, radix: int, c: int) -> torch.Tensor:
    digits = []
    v = combined.clone()
    for _ in range(c):
        digits.append(v % radix)
        v = v // radix
    return torch.stack(digits, dim=1).reshape(-1)


def pack_mixed_radix_reference(digits: list[int], radix: int) -> bytes:
    """Plain Python-int reference of :func:`pack_mixed_radix`."""
    c = mixed_radix_chunk(radix)
    acc, pos = 0, 0
    for start in range(0, len(digits), c):
        chunk = digits[start : start + c]
        value = sum(int(dg) * radix**j for j, dg in enumerate(chunk))
        acc |= value << pos
        pos += (radix ** len(chunk) - 1).bit_length()
    return acc.to_bytes((pos + 7) // 8, "little")
