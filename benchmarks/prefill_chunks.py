"""One layer's prefill product with the layer decoded in chunks into one reused buffer (it stays in L2) against the
whole-layer decode + cuBLAS and fp16 (docs/kernels.md, session 28).

    python benchmarks/prefill_chunks.py [--shapes 11008x4096,...] [--rows 128,512,2048] [--bits 3,2] \
        [--chunks 1024,2048,4096]
    TRITON_INTERPRET=1 python benchmarks/prefill_chunks.py --device cpu --shapes 64x256 --rows 24 --bits 3 \
        --chunks 32 (a smoke test: its times mean nothing)

Per shape (``out x in``), row count and rate (3 bits: leaf pairs; 2 bits: whole points), microseconds under CUDA
graphs (median): fp16 ``x @ W.T`` (cuBLAS); what the package ran above 16 rows until session 28 (the Triton
whole-layer decode to fp16, then one cuBLAS product); :func:`pvq.kernels.triton_rows.leaf_rows_chunked_product` at
each ``--chunks`` (outputs decoded a chunk), each checked first against the whole-layer path (largest difference
relative to the output's largest); and the decode alone, whole layer against the chunks into one buffer (what L2
saves the decode's writes). Random valid codes and scales (:mod:`benchmarks.speed_layout_device`'s layers).
Session 28's H100 figure this is against: 11008x4096 at 512 rows, decode + cuBLAS 120.3 us, fp16 72.0 (1.67x), the
decode's fp16 write alone 32 us at peak bandwidth (docs/kernels.md, session 28).
"""

from __future__ import annotations

import argparse
import os
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


def numbers(text: str, what: str, p: argparse.ArgumentParser, kind=int) -> list:
    try:
        values = [kind(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values:
        p.error(f"{what} takes comma-separated numbers, got {text}")
    return values


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="11008x4096,4096x11008,4096x4096,22016x4096,12288x4096")
    p.add_argument("--rows", default="128,512,2048")
    p.add_argument("--bits", default="3,2")
    p.add_argument("--chunks", default="1024,2048,4096", help="outputs decoded a chunk (multiples of 32)")
    p.add_argument("--device", default=None, help="default: cuda; cpu only under TRITON_INTERPRET=1 (smoke test)")
    a = p.parse_args()
    try:
        shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 2 for s in shapes):
        p.error(f"--shapes takes OUTxIN[,OUTxIN...], got {a.shapes}")
    if any(i % 128 for _, i in shapes):
        p.error(f"--shapes: inputs a multiple of 128 (the rows layout's step), got {a.shapes}")
    rows_list, chunks = numbers(a.rows, "--rows", p), numbers(a.chunks, "--chunks", p)
    bit_list = numbers(a.bits, "--bits", p, float)
    if any(b not in (2.0, 3.0) for b in bit_list):
        p.error(f"--bits: 3 (leaf pairs) or 2 (whole points), got {a.bits}")
    if any(c <= 0 or c % 32 for c in chunks):
        p.error(f"--chunks: positive multiples of 32, got {a.chunks}")
    device = benchmark_device(p, a.device)
    from pvq.kernels.leaf_rows import leaf_rows_from_split
    from pvq.kernels.triton_rows import leaf_rows_chunked_product, leaf_rows_decode_triton
    from speed_layout_device import random_split_runtime

    say(f"device {device_name(device)}, torch {torch.__version__}")
    bench = timer(device)
    dtype = torch.float16
    table = []
    for out_f, in_f in shapes:
        w = torch.randn(out_f, in_f, device=device, dtype=dtype) * 0.02
        for bits in bit_list:
            rt = leaf_rows_from_split(random_split_runtime(bits, 16, out_f, in_f, 7, device), whole_points=bits == 2.0)
            row = {"decode": bench(lambda: leaf_rows_decode_triton(rt, dtype))}
            for c in chunks:
                buffer = torch.empty(min(c, out_f), in_f, dtype=dtype, device=device)

                def decode_chunks(c=c, buffer=buffer):
                    for r0 in range(0, out_f, c):
                        leaf_rows_decode_triton(rt, dtype, (r0, min(out_f, r0 + c)), buffer[: min(out_f, r0 + c) - r0])
                row[f"decode {c}"] = bench(decode_chunks)
            for rows in rows_list:
                x = torch.randn(rows, in_f, device=device, dtype=dtype)
                ref = x @ leaf_rows_decode_triton(rt, dtype).T
                entry = {"shape": f"{out_f}x{in_f}", "bits": bits, "rows": rows, **row,
                         "fp16": bench(lambda: x @ w.T),
                         "decode + cuBLAS": bench(lambda: x @ leaf_rows_decode_triton(rt, dtype).T)}
                for c in chunks:
                    got = leaf_rows_chunked_product(rt, x, c)
                    diff = ((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-30)).item()
                    if diff > 1e-2:
                        say(f"  chunks of {c} at {out_f}x{in_f}, {rows} rows, {bits:g} bits: differ by {diff:.1e} of "
                            "the output's largest: not timed")
                        continue
                    entry[f"chunks {c}"] = bench(lambda c=c: leaf_rows_chunked_product(rt, x, c))
                    entry[f"diff {c}"] = diff
                table.append(entry)
                say(f"{out_f}x{in_f}, {bits:g} bits, {rows} rows: " + ", ".join(
                    f"{k} {v:.1f}" for k, v in entry.items() if k not in ("shape", "bits", "rows") and "diff" not in k))
    columns = ["fp16", "decode + cuBLAS"] + [f"chunks {c}" for c in chunks]
    decodes = ["decode"] + [f"decode {c}" for c in chunks]
    print(f"\nOne layer's product, us ({'CUDA graphs, median' if device.type == 'cuda' else 'CPU wall, one call'}); "
          "chunks C: C outputs decoded at a time into one buffer [largest difference from decode + cuBLAS, "
          "relative]; decode: the decode alone (whole layer; in chunks into one buffer)\n")
    print("| shape | bits | rows | " + " | ".join(columns) + " | best chunks x fp16 | whole x fp16 | "
          + " | ".join(decodes) + " |")
    print("|---|---|---|" + "---|" * (len(columns) + 2 + len(decodes)))
    for r in table:
        cells = [f"{r[c]:.1f}" + (f" [{r['diff ' + c[7:]]:.0e}]" if c.startswith("chunks") and c in r else "")
                 if c in r else "-" for c in columns]
        timed = [r[c] for c in columns[2:] if c in r]
        best = f"{min(timed) / r['fp16']:.2f}" if timed else "-"
        print(f"| {r['shape']} | {r['bits']:g} | {r['rows']} | " + " | ".join(cells)
              + f" | {best} | {r['decode + cuBLAS'] / r['fp16']:.2f} | " + " | ".join(f"{r[d]:.1f}" for d in decodes)
              + " |")


if __name__ == "__main__":
    main()
