"""Gaussian MSE of the nested-lattice (Voronoi) and trellis codecs against Shannon's bound.

    python benchmarks/codes_mse.py [--samples 65536] [--trellis-l 8,12] [--l16]

Every codec quantizes the same seeded i.i.d. unit Gaussian sample (seed 0) through
``quantize_grouped``; the rate is measured from the stored bytes. Lattice codes at dim 8
(256 weights per scale), each lattice at 2, 3, 4 target bits; the trellis at T = 256
(one scale per sequence) for each L in --trellis-l at k = 2, 3, 4 with 1MAD and 3INST;
``--l16`` adds L = 16 at 2 bits (QTIP's setting; about a minute per code on one CPU core).
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from pvq.codecs import make_codec, quantize_grouped


def row(label: str, codec, x: torch.Tensor) -> str:
    t0 = time.perf_counter()
    res = quantize_grouped(codec, x.view(-1, codec.dim))
    sec = time.perf_counter() - t0
    rate = res.stored.bits_per_weight()
    mse = float((res.xhat - x.view(-1, codec.dim)).double().pow(2).mean())
    gap = 10 * math.log10(mse / 2.0 ** (-2 * rate))
    line = f"| {label} | {rate:.4f} | {mse:.5f} | {2.0 ** (-2 * rate):.5f} | {gap:.2f} | {sec:.1f} |"
    print(line, file=sys.stderr, flush=True)
    return line


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=1 << 16)
    p.add_argument("--trellis-l", default="8,12")
    p.add_argument("--l16", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    x = torch.randn(args.samples, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float()
    lines = [
        f"i.i.d. unit Gaussian, {args.samples} samples, seed 0; rate from stored bytes.",
        "",
        "| codec | bits/weight | MSE | D(R) = 2^-2R | gap dB | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for lat in ("zn", "dn", "an_star", "e8"):
        for bits in (2, 3, 4):
            c = make_codec("lattice", bits, 8, lattice=lat)
            lines.append(row(f"lattice {lat} D=8 q={c.q}", c, x))
    for L in (int(v) for v in args.trellis_l.split(",") if v):
        for code in ("1mad", "3inst"):
            for k in (2, 3, 4):
                c = make_codec("trellis", k, 256, state_bits=L, code=code)
                lines.append(row(f"trellis L={L} k={k} {code}", c, x))
    if args.l16:
        for code in ("1mad", "3inst"):
            lines.append(row(f"trellis L=16 k=2 {code}", make_codec("trellis", 2, 256, state_bits=16, code=code), x))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
