"""One layer's product at prefill's row counts: the decode inside the GEMM's K loop against decode + cuBLAS and
fp16 (docs/kernels.md, session 27).

    python benchmarks/prefill_product.py [--shapes 11008x4096,...] [--rows 64,128,512,2048] [--bits 3,2] \
        [--configs 32x8,64x8,128x8]
    TRITON_INTERPRET=1 python benchmarks/prefill_product.py --device cpu --shapes 64x256 --rows 24 --bits 3 \
        --configs 16x4 (a smoke test: its times mean nothing)

Per shape (``out x in``), row count and rate (3 bits: leaf pairs; 2 bits: whole points), in microseconds under CUDA
graphs (median): fp16 ``x @ W.T`` (cuBLAS), what the package runs above 16 rows (the Triton whole-layer decode to
fp16, then cuBLAS), and :func:`pvq.kernels.triton_rows.leaf_rows_matmul_triton` at each ``--configs`` entry
(``BMxWARPS``: rows of x a program, warps), each checked against the decode path first (largest difference relative
to the output's largest). Random valid codes and scales (:mod:`benchmarks.speed_layout_device`'s layers). A 7B
prefill's 512-token GPU time is 1.37x fp16's with the decode's write 6.27 ms of 22.8 (session 27): a fused product
faster than decode + cuBLAS at 512 rows is what would take it under 1.3x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _device import benchmark_device, device_name  # noqa: E402

T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", flush=True)


def timer(device: torch.device):
    """Microseconds a call: CUDA graphs on CUDA (median), wall time on the CPU (one call)."""
    if device.type == "cuda":
        import triton.testing

        return lambda fn: float(triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")) * 1000.0

    def wall(fn) -> float:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e6
    return wall


def parse_pairs(text: str, what: str, p: argparse.ArgumentParser, lengths=(2,)) -> list[tuple[int, ...]]:
    try:
        pairs = [tuple(int(v) for v in item.split("x")) for item in text.split(",")]
    except ValueError:
        pairs = []
    if not pairs or any(len(t) not in lengths for t in pairs):
        p.error(f"{what} takes AxB[,AxB...]{'' if lengths == (2,) else ' (or AxBxC[xD])'}, got {text}")
    return pairs


def config_name(bm: int, warps: int, stages: int, bn: int) -> str:
    return f"{bm}x{warps}" + (f"x{stages}" if stages != 3 or bn != 32 else "") + (f"x{bn}" if bn != 32 else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="11008x4096,4096x11008,4096x4096,22016x4096")
    p.add_argument("--rows", default="16,64,128,512,2048")
    p.add_argument("--bits", default="3,2")
    p.add_argument("--configs", default="16x4,32x8,64x8,64x8x3x64,128x8,128x8x3x64,256x8x2",
                   help="BMxWARPS[xSTAGES[xBN]] of the fused product: BM rows of x and BN outputs (32 or 64) a "
                   "program, BM in 16/32/64/128/256, 3 stages and 32 outputs unless named (4 warps spill from 32 "
                   "rows: compile_report.py --kernels rows)")
    p.add_argument("--device", default=None, help="default: cuda; cpu only under TRITON_INTERPRET=1 (smoke test)")
    a = p.parse_args()
    shapes = parse_pairs(a.shapes, "--shapes", p)
    configs = [(*c, 3, 32)[:4] if len(c) == 2 else (*c, 32)[:4] for c in parse_pairs(a.configs, "--configs", p,
                                                                                      (2, 3, 4))]
    try:
        rows_list = [int(r) for r in a.rows.split(",")]
        bit_list = [float(b) for b in a.bits.split(",")]
    except ValueError:
        p.error(f"--rows and --bits take comma-separated numbers, got {a.rows} and {a.bits}")
    if any(b not in (2.0, 3.0) for b in bit_list):
        p.error(f"--bits: 3 (leaf pairs) or 2 (whole points), got {a.bits}")
    from pvq.kernels.triton_rows import PREFILL_BLOCK_ROWS

    if any(bm not in PREFILL_BLOCK_ROWS for bm, *_ in configs):
        p.error(f"--configs: BM one of {PREFILL_BLOCK_ROWS}, got {a.configs}")
    if any(bn not in (32, 64) or warps < 1 or stages < 1 for _, warps, stages, bn in configs):
        p.error(f"--configs: BN 32 or 64, warps and stages positive, got {a.configs}")
    if any(i % 128 for _, i in shapes):
        p.error(f"--shapes: inputs a multiple of 128 (the rows layout's step), got {a.shapes}")
    device = benchmark_device(p, a.device)
    from pvq.kernels.leaf_rows import leaf_rows_from_split
    from pvq.kernels.triton_rows import leaf_rows_decode_triton, leaf_rows_matmul_triton
    from speed_layout_device import random_split_runtime

    say(f"device {device_name(device)}, torch {torch.__version__}")
    bench = timer(device)
    dtype = torch.float16
    table = []
    for out_f, in_f in shapes:
        w = torch.randn(out_f, in_f, device=device, dtype=dtype) * 0.02
        for bits in bit_list:
            points = bits == 2.0
            rt = leaf_rows_from_split(random_split_runtime(bits, 16, out_f, in_f, 7, device), whole_points=points)
            for rows in rows_list:
                x = torch.randn(rows, in_f, device=device, dtype=dtype)
                ref = x @ leaf_rows_decode_triton(rt, dtype).T
                row = {"shape": f"{out_f}x{in_f}", "bits": bits, "rows": rows,
                       "fp16": bench(lambda: x @ w.T),
                       "decode + cuBLAS": bench(lambda: x @ leaf_rows_decode_triton(rt, dtype).T)}
                for bm, warps, stages, bn in configs:
                    name = config_name(bm, warps, stages, bn)
                    run = (lambda bm=bm, warps=warps, stages=stages, bn=bn: leaf_rows_matmul_triton(
                        rt, x, block_rows=bm, num_warps=warps, num_stages=stages, block_outputs=bn))
                    try:
                        got = run()
                    except Exception as e:  # e.g. out of shared memory for that many rows and stages
                        say(f"  fused {name}: {type(e).__name__}: {str(e)[:160]}")
                        continue
                    diff = ((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-30)).item()
                    if diff > 1e-2:
                        say(f"  fused {name} at {out_f}x{in_f}, {rows} rows, {bits:g} bits: differs by "
                            f"{diff:.1e} of the output's largest: not timed")
                        continue
                    row[f"fused {name}"] = bench(run)
                    row[f"diff {name}"] = diff
                table.append(row)
                say(f"{out_f}x{in_f}, {bits:g} bits, {rows} rows: " + ", ".join(
                    f"{k} {v:.1f}" for k, v in row.items() if k not in ("shape", "bits", "rows") and "diff" not in k))
    columns = ["fp16", "decode + cuBLAS"] + [f"fused {config_name(*c)}" for c in configs]
    print(f"\nOne layer's product, us ({'CUDA graphs, median' if device.type == 'cuda' else 'CPU wall, one call'}); "
          "fused: BM rows of x a program x warps, [largest difference from decode + cuBLAS, relative]\n")
    print("| shape | bits | rows | " + " | ".join(columns) + " | best fused x decode + cuBLAS |")
    print("|---|---|---|" + "---|" * len(columns) + "---|")
    for r in table:
        cells = [f"{r[c]:.1f}" + (f" [{r['diff ' + c[6:]]:.0e}]" if c.startswith("fused") and c in r else "")
                 if c in r else "-" for c in columns]
        fused = [r[c] for c in columns[2:] if c in r]
        best = f"{min(fused) / r['decode + cuBLAS']:.2f}" if fused else "-"
        print(f"| {r['shape']} | {r['bits']:g} | {r['rows']} | " + " | ".join(cells) + f" | {best} |")
    if table:
        ratios = [min(r[c] for c in columns[2:] if c in r) / r["decode + cuBLAS"] for r in table
                  if any(c in r for c in columns[2:])]
        if ratios:
            say(f"best fused against decode + cuBLAS: median {statistics.median(ratios):.2f}x over {len(ratios)} rows")


if __name__ == "__main__":
    main()
