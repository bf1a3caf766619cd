"""Bit-exact packing of integer codes into bytes.

* Fixed width: ``pack_bits`` / ``unpack_bits`` store non-negative integers of
  ``width`` bits (1..64) back to back, little-endian bit order, into a uint8
  tensor of ``ceil(count * width / 8)`` bytes.
* Wide fields: ``pack_limbs`` / ``unpack_limbs`` store integers wider than 64
  bits, given as little-endian 32-bit limbs ``[n, L]`` (int64 tensors holding
  values in [0, 2^32)), as fields of exactly ``width`` bits each.
* Mixed radix: ``pack_radix`` / ``unpack_radix`` combine ``c`` consecutive
  digits in [0, q) into one integer ``sum_j d_j q^j`` stored in
  ``bit_length(q^c - 1)`` bits, ``c`` chosen for the least waste per digit
  (:func:`radix_chunk`; e.g. 17 digits of radix 6 in 44 bits: 2.588 bits per
  digit), so that a code of q levels costs about log2(q) bits instead of
  ceil(log2(q)). Used by the nested-lattice (Voronoi) codes.

Every vectorized function has a plain Python-int reference
(``*_reference``) used by the tests.
"""

from __future__ import annotations

import math
from functools import lru_cache

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
    if _chunk_shape(width) is not None:
        return _pack_chunks(v, width, packed_nbytes(n, width))
    # bit matrix [n, width], little-endian within each field
    shifts = torch.arange(width, dtype=torch.int64, device=v.device)
    bits = ((v.unsqueeze(1) >> shifts) & 1).to(torch.uint8).reshape(-1)
    return _bits_to_bytes(bits, packed_nbytes(n, width))


def _chunk_shape(width: int) -> tuple[int, int] | None:
    """(values, bytes) of the smallest whole-byte run of ``width``-bit fields when it fits one int64
    word (lcm(width, 8) <= 64 bits: widths 1-8, 10, 12, 16, 20, 24, 32, 40, 48, 56, 64), else None."""
    g = math.gcd(width, 8)
    return (8 // g, width // g) if width * 8 // g <= 64 else None


def _pack_chunks(v: torch.Tensor, width: int, nbytes: int) -> torch.Tensor:
    """:func:`pack_bits` a whole-byte run at a time: each run's fields summed into one int64 word
    (disjoint bits: the sum is their OR, wrapping through the sign bit at 64), split into bytes."""
    per, nb = _chunk_shape(width)
    pad = (-v.numel()) % per
    if pad:
        v = torch.cat([v, v.new_zeros(pad)])
    shifts = torch.arange(per, dtype=torch.int64, device=v.device) * width
    words = (v.view(-1, per) << shifts).sum(dim=1)
    byte_shifts = torch.arange(nb, dtype=torch.int64, device=v.device) * 8
    return ((words.unsqueeze(1) >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)[:nbytes]


def _unpack_chunks(data: torch.Tensor, width: int, count: int) -> torch.Tensor:
    """:func:`unpack_bits` a whole-byte run at a time (the inverse of :func:`_pack_chunks`)."""
    per, nb = _chunk_shape(width)
    runs = -(-count // per)
    b = data.reshape(-1).to(torch.int64)
    if b.numel() < runs * nb:
        b = torch.cat([b, b.new_zeros(runs * nb - b.numel())])
    byte_shifts = torch.arange(nb, dtype=torch.int64, device=data.device) * 8
    words = (b[: runs * nb].view(runs, nb) << byte_shifts).sum(dim=1)
    shifts = torch.arange(per, dtype=torch.int64, device=data.device) * width
    mask = -1 if width == 64 else (1 << width) - 1
    return ((words.unsqueeze(1) >> shifts) & mask).reshape(-1)[:count]


def unpack_bits(data: torch.Tensor, width: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``count`` int64 values of ``width`` bits."""
    _check_width(width, 64)
    need = packed_nbytes(count, width)
    if data.dtype != torch.uint8 or data.numel() < need:
        raise CodecError(f"need a uint8 tensor of at least {need} bytes, got {data.numel()} {data.dtype}")
    if _chunk_shape(width) is not None:
        return _unpack_chunks(data.reshape(-1)[:need], width, count)
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


@lru_cache(maxsize=None)
def radix_chunk(q: int) -> tuple[int, int]:
    """(digits c, bits w) per packed field for radix ``q``: the c <= 62 / log2 q whose field
    of ``w = bit_length(q^c - 1)`` bits wastes least per digit (ties: smaller c)."""
    best = None
    for c in range(1, max(1, int(62 / math.log2(q))) + 1):
        w = (q**c - 1).bit_length()
        if best is None or w * best[0] < best[1] * c:
            best = (c, w)
    return best


def radix_bits(count: int, q: int) -> int:
    """Bits of the fields :func:`pack_radix` writes for ``count`` digits (before byte padding)."""
    c, w = radix_chunk(q)
    full, rest = divmod(count, c)
    return full * w + ((q**rest - 1).bit_length() if rest else 0)


def pack_radix(digits: torch.Tensor, q: int) -> torch.Tensor:
    """Digits in ``[0, q)`` (any shape, row-major) -> uint8: every ``c`` consecutive digits form
    one integer ``sum_j d_j q^j`` stored in ``w`` bits (:func:`radix_chunk`), then the last
    ``count mod c`` digits in ``bit_length(q^r - 1)`` bits, each part byte-aligned."""
    d = digits.reshape(-1).to(torch.int64)
    if d.numel() and (int(d.min()) < 0 or int(d.max()) >= q):
        raise CodecError(f"digits must lie in [0, {q})")
    c, w = radix_chunk(q)
    full, rest = divmod(d.numel(), c)
    parts = []
    if full:
        powers = torch.tensor([q**j for j in range(c)], dtype=torch.int64, device=d.device)
        parts.append(pack_bits((d[: full * c].view(full, c) * powers).sum(dim=1), w))
    if rest:
        powers = torch.tensor([q**j for j in range(rest)], dtype=torch.int64, device=d.device)
        parts.append(pack_bits((d[full * c :] * powers).sum().view(1), max(1, (q**rest - 1).bit_length())))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8)


def unpack_radix(data: torch.Tensor, q: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_radix`: ``count`` int64 digits."""
    c, w = radix_chunk(q)
    full, rest = divmod(count, c)
    head = packed_nbytes(full, w)
    wr = max(1, (q**rest - 1).bit_length()) if rest else 0
    if data.dtype != torch.uint8 or data.numel() < head + (packed_nbytes(1, wr) if rest else 0):
        raise CodecError(f"stored bytes are too short for {count} digits of radix {q}")
    out = []
    for num, width, digits_per, start in ((full, w, c, 0), (1 if rest else 0, wr, rest, head)):
        if not num:
            continue
        v = unpack_bits(data[start:], width, num)
        digs = []
        for _ in range(digits_per):
            digs.append(v % q)
            v = v // q
        out.append(torch.stack(digs, dim=1).reshape(-1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def pack_radix_reference(digits: list[int], q: int) -> bytes:
    """Plain Python-int reference of :func:`pack_radix`."""
    c, w = radix_chunk(q)
    full = len(digits) // c
    acc = 0
    for i in range(full):
        acc |= sum(int(x) * q**j for j, x in enumerate(digits[i * c : (i + 1) * c])) << (i * w)
    out = acc.to_bytes(packed_nbytes(full, w), "little")
    tail = digits[full * c :]
    if tail:
        wr = max(1, (q ** len(tail) - 1).bit_length())
        out += sum(int(x) * q**j for j, x in enumerate(tail)).to_bytes(packed_nbytes(1, wr), "little")
    return out
