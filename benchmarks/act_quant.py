"""Speed of the integer product (weights and activations as integer points) against a float matmul.

For each layer shape (out x in) and number of tokens (1, 16, 512), microseconds of:

* ``fp16``: ``x @ W^T`` in fp16 (on CPU also fp32, the dtype CPUs run fast);
* ``int_mm``: :func:`pvq.kernels.int_product.int_product_intmm` (one ``torch._int_mm`` per
  slice of D inputs, int32 dots scaled by the gains in float32);
* ``triton``: :func:`pvq.kernels.int_product.int_product_triton` (one kernel; CUDA only - on
  CPU the Triton interpreter is not a speed);
* ``proj/token``: the online activation quantization per token, the PVQ projection at about
  4 bits (D as given) and the per-token RTN at 4 bits, each on ``[512, in]`` inputs divided
  by 512 (the rotation ``V x`` not included: it is the same for any activation quantizer):
  the PyTorch reference, and on CUDA also the Triton projection
  (:func:`pvq.kernels.act_projection.act_projection_triton`, same points and gains).

Weight points are random int8 entries in [-K, K] (K of PVQ at 4 bits; the time of an int8
product does not depend on the values) with random positive gains; activations are Gaussian.

    python benchmarks/act_quant.py --device cpu
    python benchmarks/act_quant.py --device cuda --shapes 4096x4096,11008x4096,4096x11008,1032x384,384x1032
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from pvq.codecs.activation import make_activation_quantizer
from pvq.kernels.act_projection import act_projection_triton
from pvq.kernels.int_product import IntOperand, int_product_intmm, int_product_triton, intmm_weights


def _timer(device: torch.device):
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run(fn, min_seconds: float = 0.2, max_reps: int = 200) -> float:
        fn()
        sync()
        times = []
        start = time.perf_counter()
        while len(times) < max_reps and (time.perf_counter() - start < min_seconds or len(times) < 3):
            t = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e6

    return run


def _shape(text: str) -> tuple[int, int]:
    o, _, i = text.lower().partition("x")
    return int(o), int(i)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--shapes", default="1032x384,384x1032,4096x4096,11008x4096",
                   help="layer shapes out x in, comma-separated")
    p.add_argument("--tokens", default="1,16,512")
    p.add_argument("--dim", type=int, default=None, help="vector size D (default: 32, or 24 where 32 does not divide)")
    p.add_argument("--min-seconds", type=float, default=0.2, help="time per measurement (median of repeats)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    timer = _timer(device)
    tokens = [int(t) for t in args.tokens.split(",")]
    gen = torch.Generator().manual_seed(0)
    triton_ok = device.type == "cuda"
    rows = []
    for shape in args.shapes.split(","):
        o, n = _shape(shape)
        d = args.dim or (32 if n % 32 == 0 else 24)
        q_pvq = make_activation_quantizer("pvq", 4, n, d)
        q_rtn = make_activation_quantizer("rtn", 4, n)
        k_w = 30 if d >= 24 else 12  # about K of 4-bit PVQ weights; only the int8 range matters for speed
        w = IntOperand(torch.randint(-k_w, k_w + 1, (o, n), generator=gen).to(torch.int8).to(device),
                       (torch.rand(o, n // d, generator=gen) + 0.5).to(device))
        w_fp16 = torch.randn(o, n, generator=gen).to(device=device, dtype=torch.float16)
        w_fp32 = w_fp16.float()
        prepared = intmm_weights(w, d)
        x512 = torch.randn(512, n, generator=gen).to(device)
        proj = timer(lambda: q_pvq.quantize(x512), args.min_seconds, 20) / 512
        proj_rtn = timer(lambda: q_rtn.quantize(x512), args.min_seconds, 50) / 512
        proj_triton = differ = None
        if triton_ok:
            proj_triton = timer(lambda: act_projection_triton(q_pvq, x512), args.min_seconds, 50) / 512
            fast, ref = act_projection_triton(q_pvq, x512), q_pvq.quantize(x512)
            differ = int(((fast.points != ref.points).view(512, n // d, d).any(2) | (fast.gains != ref.gains)).sum())
        for t in tokens:
            x = torch.randn(t, n, generator=gen).to(device)
            a = q_pvq.quantize(x)
            xo = IntOperand(a.points, a.gains)
            xh = x.half()
            row = {"device": str(device), "out": o, "in": n, "D": d, "tokens": t,
                   "fp16_us": timer(lambda: xh @ w_fp16.T, args.min_seconds),
                   "int_mm_us": timer(lambda: int_product_intmm(xo, w, prepared), args.min_seconds),
                   "pvq_proj_us_per_token": proj, "rtn_quant_us_per_token": proj_rtn,
                   "pvq_act": q_pvq.describe()}
            if device.type == "cpu":
                row["fp32_us"] = timer(lambda: x @ w_fp32.T, args.min_seconds)
            if triton_ok:
                row["triton_us"] = timer(lambda: int_product_triton(xo, w), args.min_seconds)
                row["pvq_proj_triton_us_per_token"] = proj_triton
                row["triton_proj_differ"] = f"{differ} of {512 * n // d}"
            rows.append(row)
            print(f"{o}x{n} T={t}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items() if k.endswith("_us")),
                  file=sys.stderr, flush=True)
    print(table(rows))
    return 0


def table(rows: list[dict]) -> str:
    has_fp32 = any("fp32_us" in r for r in rows)
    has_triton = any("triton_us" in r for r in rows)
    head = ["shape (out x in)", "D", "tokens", "fp16 matmul us"] + (["fp32 matmul us"] if has_fp32 else [])
    head += ["int product (_int_mm) us", "int/fp16"] + (["int product (Triton) us", "Triton/fp16"] if has_triton else [])
    head += ["PVQ A4 projection us/token"] + (["PVQ A4 projection (Triton) us/token"] if has_triton else [])
    head += ["RTN A4 us/token"]
    lines = [f"device: {rows[0]['device']}, torch {torch.__version__}; activations: {rows[0]['pvq_act']} (first shape)"]
    if has_triton:
        differ = [f"{r['out']}x{r['in']}: {r['triton_proj_differ']}" for r in rows if r["tokens"] == rows[0]["tokens"]]
        lines.append("vectors whose Triton projection differs from the reference (512 tokens): " + ", ".join(differ))
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['out']}x{r['in']}", str(r["D"]), str(r["tokens"]), f"{r['fp16_us']:.1f}"]
        if has_fp32:
            cells.append(f"{r['fp32_us']:.1f}")
        cells += [f"{r['int_mm_us']:.1f}", f"{r['int_mm_us'] / r['fp16_us']:.2f}"]
        if has_triton:
            cells += [f"{r['triton_us']:.1f}", f"{r['triton_us'] / r['fp16_us']:.2f}"]
        cells.append(f"{r['pvq_proj_us_per_token']:.1f}")
        if has_triton:
            cells.append(f"{r['pvq_proj_triton_us_per_token']:.3f}")
        cells.append(f"{r['rtn_quant_us_per_token']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
