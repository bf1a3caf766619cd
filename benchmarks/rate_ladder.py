"""How dense is each codec's ladder of rates between 1.5 and 4.5 bits per weight.

    python benchmarks/rate_ladder.py [--lo 1.5] [--hi 4.5] [--scan 0.005] [--out docs]

For each codec at its usual settings, every target rate from LO to HI in steps of SCAN is
handed to the codec's factory (``make_codec``); the distinct codecs it builds are run on a
seeded Gaussian sample (16384 weights) through ``quantize_grouped`` and their rate is
measured from the stored bytes (codes and fp16 scales). K-means stores an fp16 codebook:
its bytes are counted once per 4096 x 4096 layer (16.8 M weights), not per sample, and its
codebook is fixed (random) here because only the rate is measured. The trellis is measured at
L = 8 state bits (its rate does not depend on L). Writes OUT/rate_ladder.md and
OUT/rate_ladder.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from pvq.codecs import CodecError, codec_to_config, make_codec, quantize_grouped

SAMPLE = 1 << 14
LAYER = 4096 * 4096

# (label, codec name, dim, options)
SETTINGS = [
    ("pvq D=32 G=16", "pvq", 32, {}),
    ("pvq D=8 G=16", "pvq", 8, {}),
    ("uniform (GPTQ grid, g128)", "uniform", 1, {}),
    ("nf4 (NF2..8, block 64)", "nf4", 1, {}),
    ("lloydmax (g128)", "lloydmax", 1, {}),
    ("e8 (E8P-like, G=32)", "e8", 8, {}),
    ("lattice e8 (Voronoi)", "lattice", 8, {"lattice": "e8"}),
    ("lattice dn D=8", "lattice", 8, {"lattice": "dn"}),
    ("lattice an_star D=8", "lattice", 8, {"lattice": "an_star"}),
    ("lattice zn D=8", "lattice", 8, {"lattice": "zn"}),
    ("trellis T=256", "trellis", 256, {"state_bits": 8}),
    ("kmeans D=2 (g128)", "kmeans", 2, {}),
    ("kmeans D=4 (g128, k <= 2^12)", "kmeans", 4, {}),
]


def _measured_rate(codec, x: torch.Tensor) -> float:
    if codec.name == "kmeans":
        if codec.num_centroids > 1 << 12:
            raise CodecError("codebook above 2^12 centroids: skipped")
        gen = torch.Generator().manual_seed(0)
        codec.codebook = torch.randn(codec.num_centroids, codec.dim, generator=gen)
    res = quantize_grouped(codec, x.view(-1, codec.dim))
    bits = res.stored.storage_bits()
    if codec.name == "kmeans":
        book = res.stored.tensors["codebook"]
        book_bits = book.numel() * book.element_size() * 8
        return (bits - book_bits) / res.stored.num_weights + book_bits / LAYER
    return res.stored.bits_per_weight()


def ladder(name: str, dim: int, options: dict, lo: float, hi: float, scan: float, x: torch.Tensor) -> list[float]:
    """Distinct measured rates in [lo, hi] of the codecs the factory builds for targets lo..hi."""
    seen, rates = set(), set()
    n = int(round((hi - lo) / scan))
    for i in range(n + 1):
        target = round(lo + i * scan, 6)
        try:
            codec = make_codec(name, target, dim, **options)
        except CodecError:
            continue
        key = json.dumps(codec_to_config(codec), sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        try:
            rate = _measured_rate(codec, x)
        except CodecError:
            continue
        if lo - 1e-9 <= rate <= hi + 1e-9:
            rates.add(round(rate, 6))
    return sorted(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lo", type=float, default=1.5)
    p.add_argument("--hi", type=float, default=4.5)
    p.add_argument("--scan", type=float, default=0.005, help="step of the target rates handed to the factories")
    p.add_argument("--out", default="docs")
    args = p.parse_args()
    torch.set_num_threads(1)
    x = torch.randn(SAMPLE, generator=torch.Generator().manual_seed(0))
    rows = []
    for label, name, dim, options in SETTINGS:
        rates = ladder(name, dim, options, args.lo, args.hi, args.scan, x)
        gaps = [b - a for a, b in zip(rates, rates[1:])]
        rows.append((label, rates, gaps))
        print(f"{label:32s} {len(rates):4d} rates", file=sys.stderr, flush=True)
    cmd = "python benchmarks/rate_ladder.py" + "".join(
        f" --{k} {v}" for k, v in (("lo", args.lo), ("hi", args.hi), ("scan", args.scan), ("out", args.out))
    )
    lines = [
        f"Distinct rates (bits per weight, measured from stored bytes) that each codec's factory reaches "
        f"in [{args.lo}, {args.hi}], scanning targets every {args.scan} bits. Made by `{cmd}`.",
        "",
        "| codec (usual settings) | distinct rates | min gap | max gap | rates |",
        "|---|---|---|---|---|",
    ]
    for label, rates, gaps in rows:
        shown = ", ".join(f"{r:.3f}" for r in rates) if len(rates) <= 12 else (
            ", ".join(f"{r:.3f}" for r in rates[:4]) + ", ..., " + ", ".join(f"{r:.3f}" for r in rates[-2:])
        )
        mn = f"{min(gaps):.4f}" if gaps else "-"
        mx = f"{max(gaps):.4f}" if gaps else "-"
        lines.append(f"| {label} | {len(rates)} | {mn} | {mx} | {shown} |")
    lines += [
        "",
        "K-means codebook bytes are counted once per 4096 x 4096 layer; K-means at D=4 stops at 2^12 "
        "centroids (3 bits per weight) here because assignment to larger codebooks is slow on CPU.",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rate_ladder.md").write_text("\n".join(lines) + "\n")
    _plot(rows, out / "rate_ladder.png", args.lo, args.hi)
    print("\n".join(lines))


def _plot(rows, path: Path, lo: float, hi: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.42 * len(rows) + 1.2))
    for i, (label, rates, _) in enumerate(rows):
        ax.plot(rates, [i] * len(rates), "|", markersize=12, markeredgewidth=1.5)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{label} ({len(rates)})" for label, rates, _ in rows], fontsize=8)
    ax.set_xlim(lo - 0.05, hi + 0.05)
    ax.invert_yaxis()
    ax.set_xlabel("bits per weight (measured from stored bytes)")
    ax.set_title("Rates each codec reaches (count in brackets)")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
