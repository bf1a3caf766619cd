"""Shared-memory bank conflicts of the row kernels' leaf gathers, counted on the CPU from real codes.

    python benchmarks/leaf_bank_conflicts.py [--bits 3,2] [--shape 512x2048] [--seed 0]

Gaussian weights coded by ``pvq`` (D = 8, 16-vector scale groups, no Hessian), transcoded to the row-interleaved
layout (``pvq.kernels.leaf_rows``). A warp's gather of one field's leaf word (32 lanes: the 32 rows of a row
group) costs as many shared-memory wavefronts as the most distinct words any of the 32 banks holds (a word's bank:
its leaf index mod 32; lanes reading the same word share it). Printed per rate: the mean wavefronts of the a and
b gathers, of uniform random leaf indices, and of the same codes with the leaves renumbered at load so that the
most used ones are dealt over the banks (rank r -> bank r mod 32), with the share of gathers the 32 most used
leaves serve, and the a gather with 2, 4, 8 or 32 copies of the table (32: each lane reads its own bank). Session 15: 3.46 wavefronts a gather at 3 bits, as uniform random indices; renumbering changes
nothing (the 32 most used leaves serve 4% of the gathers).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from pvq.codecs import make_codec
from pvq.kernels.leaf_rows import leaf_rows_runtime

BANKS = 32


def fields(rt) -> torch.Tensor:
    """Every field of the layout as int64 ``[items, 16 fields, 32 lanes]`` (item: a row group's step)."""
    w2 = rt.field_bits // 2
    words = rt.words.to(torch.int64).view(-1, w2, BANKS) & 0xFFFFFFFF
    out = []
    for j in range(16):
        bit = j * rt.field_bits
        q, s = bit >> 5, bit & 31
        hi = words[:, q + 1, :] if s + rt.field_bits > 32 else torch.zeros_like(words[:, 0, :])
        out.append(((words[:, q, :] | (hi << 32)) >> s) & ((1 << rt.field_bits) - 1))
    return torch.stack(out, 1)


def mean_wavefronts(index: torch.Tensor, copies: int = 1) -> float:
    """Mean over gathers (rows of ``index`` [n, 32]: one leaf index a lane) of the most distinct words in a bank,
    with ``copies`` copies of the table (lanes dealt over them in blocks of 32 / copies, each copy in its own
    32 / copies banks: leaf i of copy c in bank c 32 / copies + i mod (32 / copies); 32: a bank a lane)."""
    per = BANKS // copies
    copy = torch.arange(BANKS).expand_as(index) // per
    bank = copy * per + index % per
    index = index * copies + copy  # a word: (leaf, copy)
    worst = torch.zeros(index.shape[0], dtype=torch.int64)
    for b in range(BANKS):
        words = torch.where(bank == b, index, torch.full_like(index, -1)).sort(1).values
        distinct = ((words[:, 1:] != words[:, :-1]) & (words[:, 1:] >= 0)).sum(1) + (words[:, 0] >= 0).long()
        worst = torch.maximum(worst, distinct)
    return worst.float().mean().item()


def measure(bits: float, out_f: int, in_f: int, seed: int) -> dict:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from quantized_layers import random_layer

    rt = leaf_rows_runtime(random_layer(make_codec("pvq", bits, 8, group_size=16), out_f, in_f, seed), "cpu")
    f = fields(rt)
    mask = (1 << rt.leaf_bits) - 1
    ga = ((f >> rt.gain_bits) & mask).reshape(-1, BANKS)  # a gather: one field of the 32 rows
    gb = ((f >> (rt.gain_bits + rt.leaf_bits)) & mask).reshape(-1, BANKS)
    n = rt.leaves.numel()
    used = torch.bincount(torch.cat([ga.flatten(), gb.flatten()]), minlength=n).float()
    order = used.sort(descending=True).indices
    dealt = torch.empty(n, dtype=torch.int64)
    dealt[order] = torch.arange(n)
    uniform = torch.randint(0, n, ga.shape, generator=torch.Generator().manual_seed(seed))
    return {"bits": bits, "leaves": n, "a": mean_wavefronts(ga), "b": mean_wavefronts(gb),
            "uniform": mean_wavefronts(uniform), "dealt_a": mean_wavefronts(dealt[ga]),
            "dealt_b": mean_wavefronts(dealt[gb]), "top32": (used[order[:32]].sum() / used.sum()).item(),
            "copies": {c: mean_wavefronts(ga, c) for c in (2, 4, 8, 32)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", default="3,2", help="rates, comma-separated (default 3,2)")
    p.add_argument("--shape", default="512x2048", help="OUTxIN of the coded layer (default 512x2048)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    out_f, in_f = (int(v) for v in a.shape.split("x"))
    print("| bits | leaves | a gather | b gather | uniform indices | renumbered a | renumbered b | top-32 share | "
          "a gather, 2 / 4 / 8 / 32 copies |")
    print("|---|---|---|---|---|---|---|---|---|")
    for bits in (float(b) for b in a.bits.split(",")):
        r = measure(bits, out_f, in_f, a.seed)
        print(f"| {r['bits']:g} | {r['leaves']} | {r['a']:.3f} | {r['b']:.3f} | {r['uniform']:.3f} | "
              f"{r['dealt_a']:.3f} | {r['dealt_b']:.3f} | {r['top32']:.3f} | "
              f"{' / '.join(f'{v:.3f}' for v in r['copies'].values())} |", flush=True)


if __name__ == "__main__":
    main()
