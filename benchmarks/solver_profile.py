"""Where one layer's solve spends its time: ``quantize_linear`` on a random layer, timed, then profiled.

Builds a Hessian from random correlated activations, picks the layer's codec as the driver's plan would
(``pick_dims`` / ``pick_group``), solves once to warm up (and compile), once timed, and once under
``torch.profiler`` (CPU and, on a GPU, CUDA activity), then prints the top operators by self time.
A solve that is launch-bound shows many small operators with CPU time far above their device time.
``--fill both`` times the solve with the registered greedy-fill kernel (Triton on CUDA) and with the
PyTorch loop in one run and checks that both store the same codes.

    python benchmarks/solver_profile.py --shape 4096x4096 --method pvq --bits 3 --device cuda
    python benchmarks/solver_profile.py --shape 4096x4096 --device cuda --fill both --no-profile
"""

from __future__ import annotations

import argparse
import time

import torch

import pvq.kernels  # noqa: F401  (registers the CUDA greedy fill of the PVQ search)
from pvq.codecs.pyramid_search import FILL_KERNELS
from pvq.models import QuantizeConfig
from pvq.models.plan import pick_dims, pick_group
from pvq.solvers import HessianAccumulator, quantize_linear
from pvq.transforms import LayerRotation


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="4096x4096", help="OUTxIN")
    p.add_argument("--method", default="pvq")
    p.add_argument("--bits", type=float, default=3.0)
    p.add_argument("--dim", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rows", type=int, default=25, help="profiler table rows")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--fill", default="kernel", choices=("kernel", "loop", "both"),
                   help="the PVQ search's greedy fill: the registered kernel for the device (if any), the "
                        "PyTorch loop, or both in turn (same codes checked)")
    a = p.parse_args()
    out, inp = (int(s) for s in a.shape.split("x"))
    device = torch.device(a.device)
    cfg = QuantizeConfig(method=a.method, bits=a.bits, dim=a.dim)
    dim = pick_dims(cfg, [inp])[inp]
    codec = cfg.make_codec(dim, pick_group(cfg, inp, dim, "layer"))
    g = torch.Generator().manual_seed(0)
    acc = HessianAccumulator(inp, device=device)
    mix = torch.randn(inp, inp, generator=g) / inp**0.5 + torch.eye(inp)
    for _ in range(4):
        acc.add((torch.randn(1024, inp, generator=g) @ mix).to(device))
    h = acc.hessian()
    w = (torch.randn(out, inp, generator=g, dtype=torch.float64) * 0.02).to(device)
    rot = LayerRotation(out, inp, 1, 2)
    solver = cfg.solver_config()
    print(f"{a.method} {a.bits:g} bits, {out}x{inp}, {codec.describe()}, device {device}; fill kernels "
          f"registered for {sorted(FILL_KERNELS) or 'no device'}", flush=True)
    kernel = FILL_KERNELS.get(device.type)
    stored = {}
    for fill in (("kernel", "loop") if a.fill == "both" else (a.fill,)):
        if kernel is not None:
            if fill == "kernel":
                FILL_KERNELS[device.type] = kernel
            else:
                FILL_KERNELS.pop(device.type, None)
        for label in ("warm-up", "timed"):
            sync(device)
            t = time.perf_counter()
            res = quantize_linear(w, h, codec, rot, solver)
            sync(device)
            print(f"fill {fill} ({'kernel' if device.type in FILL_KERNELS else 'loop'} ran), {label}: "
                  f"{time.perf_counter() - t:.2f} s", flush=True)
        stored[fill] = {k: v.cpu() for k, v in res.stored.items()}
    if len(stored) == 2:
        same = stored["kernel"].keys() == stored["loop"].keys() and all(
            torch.equal(stored["kernel"][k], stored["loop"][k]) for k in stored["kernel"])
        print(f"stored tensors of the two fills identical: {same}", flush=True)
    if a.no_profile:
        return
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        quantize_linear(w, h, codec, rot, solver)
        sync(device)
    for key in (["self_cuda_time_total"] if device.type == "cuda" else []) + ["self_cpu_time_total"]:
        print(f"\n-- top operators by {key}")
        print(prof.key_averages().table(sort_by=key, row_limit=a.rows), flush=True)


if __name__ == "__main__":
    main()
