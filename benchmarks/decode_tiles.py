"""The whole-layer Triton decode (pvq/kernels/triton_rows.py) tile by tile, and what it costs prefill.

    python benchmarks/decode_tiles.py [--shapes 11008x4096,22016x4096] [--bits 3,2] [--prefill 512,2048]
    python benchmarks/decode_tiles.py --cpu   # every tile on a small layer through Triton's interpreter (checks only)

Above 16 input rows the backend decodes a layer to fp16 and multiplies by cuBLAS (docs/kernels.md, sessions 13,
18 and 19): at 512 rows of 11008x4096 the decode (34 us on an H200, 90 MB written at 2.7 TB/s) is what keeps
prefill from 1.3x fp16's time. Phases, each printed with its seconds:
(1) every tile of the sweep (``DecodeTile(row_groups, steps, num_warps)``) on the first shape at the first rate:
its decode checked bit for bit against the default tile's, then microseconds to fp16 (CUDA graphs, median) and
the write bandwidth that makes; (2) the ``--top`` fastest tiles and the default on every shape and rate, with
prefill (``--prefill`` rows: decode + cuBLAS against fp16's cuBLAS alone, the same x); (3) the product that decodes
its tiles inside a tensor-core GEMM (``leaf_rows_dot_triton``: the weights never written out) for ``--dot-rows``
input rows and each of DOT_TILES, checked against the decode + cuBLAS product, beside fp16 and decode + cuBLAS.
A final table for each.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pvq.kernels.leaf_rows import leaf_rows_decode_reference, leaf_rows_from_split  # noqa: E402

T0 = time.perf_counter()


def phase(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", flush=True)


def sweep_tiles(triton_rows) -> list:
    """Tiles of 1-4 row groups by 1-8 steps (at most 16 row-group steps) on 4 or 8 warps."""
    tiles = []
    for g, s, w in itertools.product((1, 2, 4), (1, 2, 4, 8), (4, 8)):
        if g * s <= 16:
            tiles.append(triton_rows.DecodeTile(g, s, w))
    return tiles


def name(tile) -> str:
    return f"{tile.row_groups}x{tile.steps}/w{tile.num_warps}"


def dot_tiles(triton_rows, rows: int) -> list:
    """The in-GEMM decode's tiles tried at ``rows`` input rows: (row groups, steps, block_m, warps[, split_k])."""
    small = [(1, 1, 16, 4), (2, 1, 16, 4), (1, 2, 16, 4), (1, 1, 32, 4), (2, 1, 64, 4), (1, 1, 16, 4, 4),
             (2, 1, 16, 4, 4), (1, 1, 32, 4, 2)]
    large = [(2, 1, 64, 4), (2, 1, 128, 4), (4, 1, 128, 8), (4, 1, 64, 4), (2, 2, 128, 8), (2, 1, 256, 8)]
    return [triton_rows.DotTile(*t) for t in (small if rows <= 64 else large)]


def dot_name(tile) -> str:
    split = f"/k{tile.split_k}" if tile.split_k > 1 else ""
    return f"dot {tile.row_groups}x{tile.steps}x{tile.block_m}/w{tile.num_warps}{split}"


def dot_rows(triton_rows, shapes, bit_list, rows_list, decode_tile) -> None:
    """Phase 3 (module docstring)."""
    from speed_layout_device import bench, random_split_runtime

    table = []
    for (out_f, in_f), bits in itertools.product(shapes, bit_list):
        rt = leaf_rows_from_split(random_split_runtime(bits, 16, out_f, in_f, seed=1, device="cuda"))
        w = (torch.randn(out_f, in_f, device="cuda") * 0.02).half()
        for n in rows_list:
            x = torch.randn(n, in_f, device="cuda").half()
            expected = (x @ triton_rows.leaf_rows_decode_triton(rt, torch.float16, tile=decode_tile).T).float()
            row = {"fp16": bench(lambda: x @ w.T),
                   "decode+cuBLAS": bench(lambda: x @ triton_rows.leaf_rows_decode_triton(
                       rt, torch.float16, tile=decode_tile).T)}
            for tile in dot_tiles(triton_rows, n):
                got = triton_rows.leaf_rows_dot_triton(rt, x, tile).float()
                err = float((got - expected).abs().max() / expected.abs().max())
                if not err < 4e-3:
                    phase(f"{dot_name(tile)}: off decode + cuBLAS by {err:.1e} of its largest output: not timed")
                    continue
                row[dot_name(tile)] = bench(lambda: triton_rows.leaf_rows_dot_triton(rt, x, tile))
            phase(f"{out_f}x{in_f} {bits:g} bits, {n} rows: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()))
            table.append((f"{out_f}x{in_f}", bits, n, row))
        del rt, w
        torch.cuda.empty_cache()
    print("\nus, and x fp16's time (the in-GEMM decode's best tile named)")
    print("| shape | bits | rows | fp16 | decode+cuBLAS | best in-GEMM decode | its tile |\n|---|---|---|---|---|---|---|")
    for shape, bits, n, row in table:
        dots = {k: v for k, v in row.items() if k.startswith("dot")}
        best = min(dots, key=dots.get) if dots else None
        f = row["fp16"]
        cell = f"{dots[best]:.1f} ({dots[best] / f:.2f}x)" if best else "-"
        print(f"| {shape} | {bits:g} | {n} | {f:.1f} | {row['decode+cuBLAS']:.1f} ({row['decode+cuBLAS'] / f:.2f}x) | "
              f"{cell} | {best[4:] if best else '-'} |")


def cpu_checks(triton_rows) -> None:
    """Every tile of the sweep against the reference on a 70x384 layer (interpreter; no timing)."""
    from speed_layout_device import random_split_runtime

    for bits in (2.0, 3.0):
        rt = leaf_rows_from_split(random_split_runtime(bits, 16, 70, 384, seed=0, device="cpu"))
        ref = leaf_rows_decode_reference(rt)
        bad = [name(t) for t in sweep_tiles(triton_rows)
               if not torch.equal(triton_rows.leaf_rows_decode_triton(rt, tile=t), ref)]
        phase(f"{bits:g} bits 70x384: {len(sweep_tiles(triton_rows))} tiles, unequal to the reference: {bad or 'none'}")
        assert not bad
        for n in (5, 70):
            x = torch.randn(n, 384).half()
            exp = x.float() @ ref.half().float().T
            off = {dot_name(t): float((triton_rows.leaf_rows_dot_triton(rt, x, t).float() - exp).abs().max()
                                      / exp.abs().max()) for t in dot_tiles(triton_rows, n)}
            phase(f"{bits:g} bits 70x384, {n} rows: in-GEMM decode off the reference's product by at most "
                  f"{max(off.values()):.1e} of its largest output ({len(off)} tiles)")
            assert max(off.values()) < 4e-3, off


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="11008x4096,22016x4096,4096x11008,12288x4096,4096x4096")
    p.add_argument("--bits", default="3,2")
    p.add_argument("--prefill", default="512,2048")
    p.add_argument("--dot-rows", default="16,64,512,2048", help="input rows of phase 3 (empty: skip it)")
    p.add_argument("--dot-shapes", type=int, default=3, help="phase 3 takes the first this many shapes")
    p.add_argument("--top", type=int, default=3, help="tiles of the sweep carried to every shape")
    p.add_argument("--cpu", action="store_true", help="check every tile on a small layer on the CPU, no timing")
    a = p.parse_args()
    if a.cpu:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from pvq.kernels import triton_rows

    if a.cpu:
        cpu_checks(triton_rows)
        return
    from speed_layout_device import bench, random_split_runtime

    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    bit_list = [float(b) for b in a.bits.split(",")]
    prefill = [int(r) for r in a.prefill.split(",") if r]
    phase(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    out_f, in_f = shapes[0]
    rt = leaf_rows_from_split(random_split_runtime(bit_list[0], 16, out_f, in_f, seed=1, device="cuda"))
    default = triton_rows.DEFAULT_DECODE_TILE
    expected = triton_rows.leaf_rows_decode_triton(rt, torch.float16, tile=default)
    gbytes = out_f * in_f * 2 / 1e3  # fp16 bytes written / 1e3: GB/s from microseconds
    sweep = {}
    for tile in sweep_tiles(triton_rows):
        t = time.perf_counter()
        got = triton_rows.leaf_rows_decode_triton(rt, torch.float16, tile=tile)
        if not torch.equal(got, expected):
            phase(f"tile {name(tile)}: decode differs from the default tile's: not timed")
            continue
        sweep[tile] = bench(lambda: triton_rows.leaf_rows_decode_triton(rt, torch.float16, tile=tile))
        phase(f"tile {name(tile)}: {sweep[tile]:.1f} us ({gbytes / sweep[tile]:.0f} GB/s written; "
              f"compile + time {time.perf_counter() - t:.1f} s)")
    print(f"\n{out_f}x{in_f} at {bit_list[0]:g} bits, decode to fp16 (us), tile = row groups x steps / warps")
    print("| tile | us | GB/s written | x default |\n|---|---|---|---|")
    for tile, us in sorted(sweep.items(), key=lambda kv: kv[1]):
        print(f"| {name(tile)}{' (default)' if tile == default else ''} | {us:.1f} | {gbytes / us:.0f} | "
              f"{sweep[default] / us:.2f} |")
    best = [t for t, _ in sorted(sweep.items(), key=lambda kv: kv[1])][: a.top]
    tiles = best + ([default] if default not in best else [])
    del rt, expected
    rows = []
    for (out_f, in_f), bits in itertools.product(shapes, bit_list):
        rt = leaf_rows_from_split(random_split_runtime(bits, 16, out_f, in_f, seed=1, device="cuda"))
        w = (torch.randn(out_f, in_f, device="cuda") * 0.02).half()
        row = {f"decode {name(t)}": bench(lambda: triton_rows.leaf_rows_decode_triton(rt, torch.float16, tile=t))
               for t in tiles}
        for n in prefill:
            x = torch.randn(n, in_f, device="cuda").half()
            row[f"fp16 {n}"] = bench(lambda: x @ w.T)
            for t in tiles:
                row[f"{n} {name(t)}"] = bench(
                    lambda: x @ triton_rows.leaf_rows_decode_triton(rt, torch.float16, tile=t).T)
        phase(f"{out_f}x{in_f} {bits:g} bits: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()))
        rows.append((f"{out_f}x{in_f}", bits, row))
        del rt, w
        torch.cuda.empty_cache()
    cols = list(rows[0][2])
    print("\nus (prefill columns: decode + cuBLAS, and fp16's cuBLAS alone, at that many rows)")
    print("| shape | bits | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 2))
    for shape, bits, row in rows:
        cells = []
        for c in cols:
            n = c.split()[0]
            ratio = f" ({row[c] / row['fp16 ' + n]:.2f}x)" if n.isdigit() and not c.startswith("fp16") else ""
            cells.append(f"{row[c]:.1f}{ratio}")
        print(f"| {shape} | {bits:g} | " + " | ".join(cells) + " |")
    rows_list = [int(r) for r in a.dot_rows.split(",") if r]
    if rows_list:
        dot_rows(triton_rows, shapes[: a.dot_shapes], bit_list, rows_list, best[0])
    phase("done")


if __name__ == "__main__":
    main()
