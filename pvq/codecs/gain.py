"""Amplitude (gain) quantizers for the pyramid codec.

For a rotated Gaussian group of G vectors of D numbers with group norm
``S = sqrt(sum_j r_j^2)``, the energy share of vector i,
``u_i = r_i^2 / S^2``, follows Beta(D/2, D(G-1)/2); its amplitude is
``a_i = sqrt(u_i)`` in [0, 1] (the vector norm in units of the group norm).

* :func:`beta_quantile_levels` - the paper's levels: mid-quantiles of the
  Beta law, in the energy (u) domain.
* :func:`lloyd_max_gain_levels` - MSE-optimal (Lloyd-Max) levels on the law
  of ``a`` (the right choice for reconstruction error) or of ``u``.
* :class:`GainQuantizer` - nearest-level coding of amplitudes.

Not a registered codec: the pyramid codec composes it with the shape index.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy import stats

from .base import CodecError
from .scalar import lloyd_max


def _check(dim: int, group_size: int, bits: int | None = None) -> None:
    if not isinstance(dim, int) or dim < 1:
        raise CodecError(f"dim must be a positive integer, got {dim!r}")
    if not isinstance(group_size, int) or group_size < 2:
        raise CodecError(
            f"the gain law needs a group of at least 2 vectors (group_size >= 2), got {group_size!r}; "
            "with one vector per group the amplitude is always 1 and needs no gain code"
        )
    if bits is not None and (not isinstance(bits, int) or not 1 <= bits <= 16):
        raise CodecError(f"gain bits must be an integer in [1, 16], got {bits!r}")


def beta_law(dim: int, group_size: int):
    """Frozen scipy law of ``u = r_i^2 / sum_j r_j^2``: Beta(D/2, D(G-1)/2)."""
    _check(dim, group_size)
    return stats.beta(dim / 2.0, dim * (group_size - 1) / 2.0)


def beta_quantile_levels(dim: int, group_size: int, bits: int) -> np.ndarray:
    """The paper's energy levels ``F^-1((j + 1/2) / L)``, j < L = 2^bits: [L] (u domain)."""
    _check(dim, group_size, bits)
    n = 1 << bits
    return beta_law(dim, group_size).ppf((np.arange(n) + 0.5) / n)


class _AmplitudeLaw:
    """Law of ``a = sqrt(u)``, u ~ Beta(D/2, D(G-1)/2), on [0, 1]."""

    def __init__(self, energy_law) -> None:
        self.u = energy_law

    def cdf(self, a):
        a = np.clip(np.asarray(a, dtype=np.float64), 0.0, 1.0)
        return self.u.cdf(a * a)

    def ppf(self, p):
        return np.sqrt(self.u.ppf(p))

    def support(self) -> tuple[float, float]:
        return (0.0, 1.0)


@functools.lru_cache(maxsize=256)
def _lloyd_max_gain(dim: int, group_size: int, bits: int, domain: str) -> tuple[float, ...]:
    law = beta_law(dim, group_size)
    if domain == "amplitude":
        law = _AmplitudeLaw(law)
    res = lloyd_max(1 << bits, law.cdf, law.support(), law.ppf)
    return tuple(float(v) for v in res.levels)


def lloyd_max_gain_levels(dim: int, group_size: int, bits: int, domain: str = "amplitude") -> np.ndarray:
    """Lloyd-Max levels [2^bits] of the amplitude ``a`` (default) or the energy ``u``.

    Returned in the domain they were optimized in (cached).
    """
    _check(dim, group_size, bits)
    if domain not in ("amplitude", "energy"):
        raise CodecError(f"domain must be 'amplitude' or 'energy', got {domain!r}")
    return np.array(_lloyd_max_gain(dim, group_size, bits, domain))


class GainQuantizer:
    """Nearest-level quantizer of amplitudes on a sorted table ``levels`` [L] (float64).

    ``encode(a: [n]) -> [n] int64`` codes, ``decode(codes) -> [n]`` float32.
    """

    def __init__(self, levels_amplitude: torch.Tensor | np.ndarray) -> None:
        lv = torch.as_tensor(np.asarray(levels_amplitude, dtype=np.float64)).reshape(-1)
        if lv.numel() < 1 or not torch.isfinite(lv).all():
            raise CodecError("gain levels must be a non-empty finite table")
        if (lv[1:] <= lv[:-1]).any():
            raise CodecError("gain levels must be strictly increasing")
        self.levels = lv
        self.thresholds = 0.5 * (lv[1:] + lv[:-1])

    @property
    def num_levels(self) -> int:
        return int(self.levels.numel())

    @property
    def bits(self) -> int:
        """Bits of a fixed-width gain code: ceil(log2 L)."""
        return max(0, math.ceil(math.log2(self.num_levels)))

    def encode(self, a: torch.Tensor) -> torch.Tensor:
        """Index of the nearest level for each amplitude ``a: [n]`` -> int64 [n]."""
        th = self.thresholds.to(device=a.device)
        return torch.bucketize(a.double().reshape(-1).contiguous(), th).view(a.shape)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Levels of ``codes: [n]`` -> float32 [n]."""
        return self.levels.to(codes.device)[codes].float()

    @classmethod
    def beta_quantile(cls, dim: int, group_size: int, bits: int) -> "GainQuantizer":
        """The paper's quantizer: sqrt of the Beta mid-quantiles (amplitude domain)."""
        return cls(np.sqrt(beta_quantile_levels(dim, group_size, bits)))

    @classmethod
    def lloyd_max(cls, dim: int, group_size: int, bits: int) -> "GainQuantizer":
        """MSE-optimal amplitude quantizer for the Beta law."""
        return cls(lloyd_max_gain_levels(dim, group_size, bits, "amplitude"))

    def __repr__(self) -> str:
        return f"GainQuantizer(L={self.num_levels}, [{float(self.levels[0]):.4g} .. {float(self.levels[-1]):.4g}])"


def gain_encode_reference(a: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Plain reference: index of the nearest level (lowest index on ties)."""
    lv = levels.double().tolist()
    out = []
    for v in a.double().reshape(-1).tolist():
        out.append(min(range(len(lv)), key=lambda i: (abs(v - lv[i]), i)))
    return torch.tensor(out, dtype=torch.int64).view(a.shape)
