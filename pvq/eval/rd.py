"""Rate-distortion bench: codecs on synthetic i.i.d. sources against Shannon's bound.

For each codec and setting, quantize ``samples`` i.i.d. unit-variance numbers
(cut into vectors of the codec's dimension, consecutive vectors forming the
scale groups), and report the rate measured from the stored bytes, the MSE per
dimension, the SNR and the gap to D(R) = 2^(-2R), the distortion-rate function
of the unit Gaussian (for the Laplace source that curve is an upper bound on
its own D(R), so the gap is a conservative reference there).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from ..codecs import CODECS, CodecError, make_codec, quantize_grouped
from ..codecs.coded import code_report

SOURCES: dict[str, Callable[[int, torch.Generator], torch.Tensor]] = {
    "gaussian": lambda n, gen: torch.randn(n, generator=gen, dtype=torch.float64).float(),
    # Laplace with unit variance: scale b = 1/sqrt(2); inverse-CDF sampling from a seeded uniform
    "laplace": lambda n, gen: _laplace(n, gen),
}


def _laplace(n: int, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=gen, dtype=torch.float64) - 0.5
    b = 1 / math.sqrt(2)
    return (-b * torch.sign(u) * torch.log1p(-2 * u.abs())).float()


MAX_RATES = 1000


def parse_rates(text: str) -> list[float]:
    """Rates from ``"2,3,4"``, ``"2:4:0.05"`` (start:stop:step, stop included) or a mix
    (``"1.5,2:3:0.25"``), in the order given. Raises :class:`CodecError` on bad input."""
    out: list[float] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        parts = item.split(":")
        try:
            nums = [float(p) for p in parts]
        except ValueError:
            raise CodecError(f"bad rate {item!r}: give numbers like 2,3,4 or a range start:stop:step like 2:4:0.05")
        if len(nums) == 1:
            out.append(nums[0])
            continue
        if len(nums) != 3 or not all(math.isfinite(v) for v in nums):
            raise CodecError(f"bad range {item!r}: write start:stop:step, e.g. 2:4:0.05")
        start, stop, step = nums
        if step <= 0 or stop < start:
            raise CodecError(f"bad range {item!r}: need step > 0 and stop >= start")
        count = int(math.floor((stop - start) / step + 1e-9)) + 1
        if len(out) + count > MAX_RATES:
            raise CodecError(f"range {item!r} gives {count} rates; use at most {MAX_RATES} (raise the step)")
        out.extend(round(start + i * step, 10) for i in range(count))
    if not out:
        raise CodecError("no rate given; e.g. --bits 2,3,4 or --bits 2:4:0.05")
    return out


def shannon_mse(bits_per_weight: float) -> float:
    """D(R) = 2^(-2R): the least MSE per dimension of a unit Gaussian at R bits."""
    return 2.0 ** (-2.0 * bits_per_weight)


@dataclass
class RDResult:
    """One row of the bench (JSON keys as documented in the README)."""

    codec: str
    dim: int
    target_bits: float
    bits_per_weight: float
    mse: float
    snr_db: float
    shannon_gap_db: float
    samples: int
    seconds: float
    setting: str
    entropy_bits_per_weight: float | None = None  # empirical order-0 entropy of the stored symbols
    coded_bits_per_weight: float | None = None  # what lossless coding of the stored streams achieved

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RDConfig:
    """What to run; validated at construction so bad input fails before any work."""

    source: str = "gaussian"
    codecs: tuple[str, ...] = ("pvq", "lloydmax", "uniform", "nf4", "e8", "kmeans")
    dims: tuple[int, ...] | None = None  # None: each codec's default dimension
    bits: tuple[float, ...] = (2.0, 3.0, 4.0)
    samples: int = 1 << 17
    seed: int = 0
    options: tuple[tuple[str, object], ...] = ()  # (name, value) passed to every codec's factory

    def __post_init__(self):
        if self.source not in SOURCES:
            raise CodecError(f"unknown source {self.source!r}; choose one of: {', '.join(SOURCES)}")
        unknown = [c for c in self.codecs if c not in CODECS]
        if unknown or not self.codecs:
            raise CodecError(
                f"unknown codec(s) {unknown or '(none given)'}; choose from: {', '.join(sorted(CODECS))}"
            )
        if self.dims is not None and any((not isinstance(d, int)) or d < 1 for d in self.dims):
            raise CodecError(f"dimensions must be integers >= 1, got {self.dims}")
        if not self.bits or any(not (isinstance(b, (int, float)) and 0 < b <= 16) for b in self.bits):
            raise CodecError(f"rates must be numbers in (0, 16] bits per weight, got {self.bits}")
        if self.samples < 1024:
            raise CodecError(f"use at least 1024 samples (got {self.samples}); 10^5 or more for stable numbers")


def _settings(config: RDConfig) -> list[tuple[str, int, float]]:
    out = []
    for name in config.codecs:
        spec = CODECS[name]
        dims = config.dims if config.dims is not None else (spec.default_dim,)
        for dim in dims:
            if spec.dims is not None and dim not in spec.dims:
                continue
            for bits in config.bits:
                out.append((name, dim, bits))
    return out


def run_rd(config: RDConfig, progress: Callable[[str], None] | None = None) -> list[RDResult]:
    """Run the bench; codecs that cannot reach a setting are reported through ``progress`` and skipped."""
    settings = _settings(config)
    if not settings:
        raise CodecError("no codec accepts the requested dimensions; drop --dim or pick dims the codecs support")
    # build every codec first: a rate no setting reaches fails here, before the long work
    built, refused = [], []
    for name, dim, bits in settings:
        try:
            built.append((name, dim, bits, make_codec(name, bits, dim, **dict(config.options))))
        except TypeError as err:
            raise CodecError(f"codec {name!r} takes no option among {[k for k, _ in config.options]}: {err}") from err
        except CodecError as err:
            refused.append(f"{name} D={dim} at {bits} bits: {err}")
            if progress:
                progress(f"skip {refused[-1]}")
    if not built:
        raise CodecError("no codec reaches the requested settings:\n  " + "\n  ".join(refused))
    results = []
    for name, dim, bits, codec in built:
        block = dim * codec.group_size
        n = config.samples // block * block
        if n == 0:
            if progress:
                progress(f"skip {name} D={dim}: a group needs {block} samples, more than --samples")
            continue
        gen = torch.Generator().manual_seed(config.seed)
        x = SOURCES[config.source](n, gen).view(-1, dim)
        start = time.perf_counter()
        res = quantize_grouped(codec, x)
        seconds = time.perf_counter() - start
        mse = float((res.xhat - x).double().pow(2).mean())
        rate = res.stored.bits_per_weight()
        var = float(x.double().pow(2).mean())
        coding = code_report(res.codec, res.stored.tensors, x.shape[0])
        results.append(
            RDResult(
                codec=name,
                dim=dim,
                target_bits=bits,
                bits_per_weight=rate,
                mse=mse,
                snr_db=10 * math.log10(var / mse) if mse > 0 else math.inf,
                shannon_gap_db=10 * math.log10(mse / shannon_mse(rate)) if mse > 0 else -math.inf,
                samples=n,
                seconds=seconds,
                setting=res.codec.describe(),  # the fitted codec (ecsq: its chosen step)
                entropy_bits_per_weight=sum(s["entropy_bits"] for s in coding["streams"].values()) / x.numel(),
                coded_bits_per_weight=min(coding["coded_bits"], coding["fixed_bits"]) / x.numel(),
            )
        )
        if progress:
            progress(f"{name:9s} D={dim:<4d} {rate:6.3f} bpw  mse {mse:.5f}  ({seconds:.1f} s)")
    return results


def plot_rd(results: list[RDResult], path: str, source: str) -> None:
    """MSE (dB) against measured rate per codec/dimension, with the Shannon bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[RDResult]] = {}
    for r in results:
        series.setdefault(f"{r.codec} (D={r.dim})", []).append(r)
    for label, rows in sorted(series.items()):
        rows = sorted(rows, key=lambda r: r.bits_per_weight)
        ax.plot(
            [r.bits_per_weight for r in rows], [10 * math.log10(r.mse) for r in rows], marker="o", label=label
        )
    rates = [r.bits_per_weight for r in results]
    lo, hi = min(rates) - 0.2, max(rates) + 0.2
    grid = [lo + (hi - lo) * i / 50 for i in range(51)]
    ax.plot(grid, [10 * math.log10(shannon_mse(r)) for r in grid], "k--", label="Shannon D(R) = 2^(-2R)")
    ax.set_xlabel("bits per weight (measured from stored bytes)")
    ax.set_ylabel("MSE per dimension (dB)")
    ax.set_title(f"Rate-distortion, i.i.d. {source} source (unit variance)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
