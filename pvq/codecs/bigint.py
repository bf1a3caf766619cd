"""Vectorized arbitrary-precision non-negative integers as 32-bit limbs.

A batch of integers is an int64 tensor ``[..., L]``; limb ``j`` holds bits
``32j .. 32j+31`` (little-endian). Intermediate results may hold limbs outside
[0, 2^32) (sums, differences); :func:`normalize` propagates carries and
borrows. int64 limbs leave 31 bits of headroom, so up to about 2^30 limb-wise
additions can be accumulated before normalizing.

These are the fast paths of the pyramid rank/unrank; Python ints are the
reference (:func:`to_ints`, :func:`from_ints`).
"""

from __future__ import annotations

import numpy as np
import torch

LIMB_BITS = 32
LIMB_MASK = (1 << LIMB_BITS) - 1


def num_limbs(max_value: int) -> int:
    """Limbs needed to hold every integer in [0, max_value]."""
    return max(1, -(-max(max_value, 1).bit_length() // LIMB_BITS))


def from_ints(values, limbs: int, device=None) -> torch.Tensor:
    """Python ints (a flat or rectangular nested list) -> int64 limb tensor ``[..., limbs]``."""
    shape: list[int] = []
    level = values
    while isinstance(level, (list, tuple)):
        shape.append(len(level))
        level = level[0] if level else 0
    flat = values
    for _ in range(len(shape) - 1):
        flat = [v for row in flat for v in row]
    if not shape:
        flat, shape = [values], []
    width = limbs * LIMB_BITS // 8
    try:
        raw = b"".join(int(v).to_bytes(width, "little") for v in flat)
    except OverflowError as err:  # negative or too wide
        raise ValueError(f"an integer does not fit in {limbs} limbs of {LIMB_BITS} bits (or is negative)") from err
    array = np.frombuffer(raw, dtype="<u4").astype(np.int64).reshape(*shape, limbs)
    return torch.from_numpy(array.copy()).to(device)


def to_ints(limbs: torch.Tensor) -> list:
    """int64 limb tensor ``[..., L]`` (normalized) -> nested lists of Python ints."""
    flat = limbs.reshape(-1, limbs.shape[-1]).tolist()
    ints = [sum(int(x) << (LIMB_BITS * j) for j, x in enumerate(row)) for row in flat]
    if limbs.dim() == 1:
        return ints[0]
    shape = limbs.shape[:-1]
    for size in reversed(shape[1:]):
        ints = [ints[i : i + size] for i in range(0, len(ints), size)]
    return ints


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Propagate carries/borrows so every limb lies in [0, 2^32).

    The represented value must be non-negative and fit in ``L`` limbs.
    """
    x = x.clone()
    carry = torch.zeros_like(x[..., 0])
    for j in range(x.shape[-1]):
        v = x[..., j] + carry
        carry = v >> LIMB_BITS  # arithmetic shift: floor division, handles borrows
        x[..., j] = v & LIMB_MASK
    return x


def compare(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sign of ``a - b`` (-1, 0, 1) for normalized limb tensors (broadcasting)."""
    s = torch.sign(a - b)
    weights = torch.ones(s.shape[-1], dtype=torch.int64, device=s.device).cumsum(0) - 1
    if s.shape[-1] > 62:
        raise ValueError("compare supports at most 62 limbs (1984 bits)")
    return torch.sign((s << weights).sum(-1))


def mul_small(x: torch.Tensor, m: int) -> torch.Tensor:
    """``x * m`` for a small non-negative int ``m < 2^30`` (result normalized, one limb wider)."""
    wide = torch.nn.functional.pad(x, (0, 1))
    return normalize(wide * m)


def add_small(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``x + v`` for an int64 tensor ``v`` in [0, 2^32) with x's leading shape."""
    y = x.clone()
    y[..., 0] += v
    return normalize(y)


def divmod_small(x: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x // m, x % m)`` for a small positive int ``m < 2^31``."""
    q = torch.empty_like(x)
    rem = torch.zeros_like(x[..., 0])
    for j in reversed(range(x.shape[-1])):
        cur = (rem << LIMB_BITS) | x[..., j]
        q[..., j] = cur // m
        rem = cur % m
    return q, rem


def to_int64(x: torch.Tensor) -> torch.Tensor:
    """Normalized limbs ``[..., L]`` of values below 2^63 -> int64 ``[...]``."""
    if x.shape[-1] > 2 and bool(x[..., 2:].any()):
        raise ValueError("value does not fit in int64")
    value = x[..., 0].clone()
    if x.shape[-1] > 1:
        if bool((x[..., 1] >> 31).any()):
            raise ValueError("value does not fit in int64")
        value |= x[..., 1] << LIMB_BITS
    return value
