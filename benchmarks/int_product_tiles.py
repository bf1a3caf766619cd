"""Tile settings of the Triton integer product on one GPU (what :func:`int_product_config` was chosen from).

    python benchmarks/int_product_tiles.py [--shapes 4096x4096,11008x4096] [--tokens 1,16,512] [--dim 32]

For each shape (out x in) and number of tokens: microseconds (median of ``triton.testing.do_bench``)
of an fp16 matmul and of :func:`pvq.kernels.int_product.int_product_triton` under each tile setting
(``block_t x block_o`` of the ``dot`` kernel, or ``gemv`` with its rows per program at one token;
the split of the slices over programs; warps), the default marked ``*``.
Operands are random int8 points with one float32 gain per slice of ``--dim`` inputs.
"""

from __future__ import annotations

import argparse
import itertools

import torch
import triton.testing

from pvq.kernels.int_product import IntOperand, int_product_triton
from pvq.kernels.triton_int import int_product_config


def _key(cfg: dict) -> str:
    """A setting's label: ``gemv 16/s2/w4`` or ``16x64/s8/w4`` (tile, split of the slices, warps)."""
    tile = f"gemv {cfg['block_o']}" if cfg["kernel"] == "gemv" else f"{cfg['block_t']}x{cfg['block_o']}"
    return f"{tile}/s{cfg['split']}/w{cfg['warps']}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="4096x4096,11008x4096")
    p.add_argument("--tokens", default="1,16,512")
    p.add_argument("--dim", type=int, default=32)
    a = p.parse_args()
    bench = lambda fn: triton.testing.do_bench(fn, return_mode="median") * 1000  # noqa: E731
    print("| shape | tokens | fp16 us | default | best setting | best us | all settings (us) |")
    print("|---|---|---|---|---|---|---|")
    for shape in a.shapes.split(","):
        o, n = (int(v) for v in shape.split("x"))
        w = IntOperand(torch.randint(-30, 31, (o, n), device="cuda", dtype=torch.int8),
                       torch.rand(o, n // a.dim, device="cuda") + 0.5)
        wh = torch.randn(o, n, device="cuda", dtype=torch.float16)
        for t in (int(v) for v in a.tokens.split(",")):
            x = IntOperand(torch.randint(-30, 31, (t, n), device="cuda", dtype=torch.int8),
                           torch.rand(t, n // a.dim, device="cuda") + 0.5)
            xh = torch.randn(t, n, device="cuda", dtype=torch.float16)
            fp16 = bench(lambda: xh @ wh.T)
            default = int_product_config(t, o, n // a.dim, a.dim)
            results = {}
            for (bt, bo, warps), split in itertools.product(
                    [(16, 64, 4), (16, 128, 4), (32, 64, 4), (64, 64, 4), (64, 128, 4), (128, 128, 8)], (1, 2, 4, 8, 16)):
                if bt > max(16, 2 * t) or (n // a.dim) // split < 4:
                    continue
                cfg = {"kernel": "dot", "block_t": bt, "block_o": bo, "split": split, "warps": warps}
                results[_key(cfg)] = bench(lambda: int_product_triton(x, w, cfg))
            if t == 1:  # the one-token kernel
                for (bo, warps), split in itertools.product([(16, 4), (32, 4), (64, 8)], (1, 2, 4, 8)):
                    cfg = {"kernel": "gemv", "block_o": bo, "split": split, "warps": warps}
                    results[_key(cfg)] = bench(lambda: int_product_triton(x, w, cfg))
            d_key = _key(default)
            d_us = results.get(d_key) or bench(lambda: int_product_triton(x, w))
            best = min(results, key=results.get)
            cells = ", ".join(f"{k}{'*' if k == d_key else ''} {v:.1f}" for k, v in results.items())
            print(f"| {shape} | {t} | {fp16:.1f} | {d_us:.1f} | {best} | {results[best]:.1f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
