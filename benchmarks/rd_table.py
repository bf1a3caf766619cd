"""The rate-distortion table and plot of the docs: every codec at 2, 3, 4 bits per weight.

    python benchmarks/rd_table.py [--source gaussian] [--samples 131072] [--out docs]

PVQ runs at D = 8, 32, 128; the other codecs at their own dimension (scalar
codecs D=1 with their usual groups, E8 at 8, K-means at 4 for 2 bits and 2
above, the nested-lattice code ``lattice`` at 8 with E8; the trellis is left out: its
L = 16 Viterbi takes minutes on CPU, see benchmarks/codes_mse.py).
Writes OUT/rd_SOURCE.md (a markdown table) and OUT/rd_SOURCE.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pvq.eval.rd import RDConfig, log_to_stderr, plot_rd, run_rd, shannon_mse

GRID = [
    RDConfig(codecs=("pvq",), dims=(8, 32, 128)),
    RDConfig(codecs=("lloydmax", "uniform", "nf4", "e8")),
    RDConfig(codecs=("kmeans",), dims=(4,), bits=(2.0,)),
    RDConfig(codecs=("kmeans",), dims=(2,), bits=(3.0, 4.0)),
    RDConfig(codecs=("lattice",)),  # Voronoi code of E8 (the factory's default lattice), q = 4, 8, 15
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default="gaussian")
    p.add_argument("--samples", type=int, default=1 << 17)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs")
    args = p.parse_args()
    results = []
    for cfg in GRID:
        cfg = RDConfig(source=args.source, codecs=cfg.codecs, dims=cfg.dims, bits=cfg.bits,
                       samples=args.samples, seed=args.seed)
        results += run_rd(cfg, progress=log_to_stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"i.i.d. {args.source} source, unit variance, {args.samples} samples, seed {args.seed}; "
        "rate measured from the stored bytes (codes, scales, codebooks).",
        "",
        "| codec | D | target bits | bits/weight | MSE | D(R) = 2^-2R | SNR dB | gap to D(R) dB | encode+decode s | setting |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: (r.target_bits, r.mse)):
        lines.append(
            f"| {r.codec} | {r.dim} | {r.target_bits:g} | {r.bits_per_weight:.4f} | {r.mse:.5f} | "
            f"{shannon_mse(r.bits_per_weight):.5f} | {r.snr_db:.2f} | {r.shannon_gap_db:.2f} | {r.seconds:.2f} | "
            f"`{r.setting}` |"
        )
    (out / f"rd_{args.source}.md").write_text("\n".join(lines) + "\n")
    plot_rd(results, str(out / f"rd_{args.source}.png"), args.source)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
