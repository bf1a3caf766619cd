"""Peak host memory of one layer's solve, in units of its [in, in] float64 Hessian.

Accumulates a Hessian of ``--inputs`` features from random activations, then solves ``--rows`` random
output rows with the method's codec (``quantize_linear``, error feedback on, the layer's input rotated
unless ``--no-rotation``), the Hessian handed over as the driver does it (``HessianAccumulator.take()``
as a temporary; ``hessian()`` on versions without it), and prints the process's peak resident set above
its size before the solve (``ru_maxrss`` and ``/proc/self/statm``; the accumulated Hessian is in that
start), divided by the Hessian's bytes. The solver's copies of the Hessian (rotated, damped, Cholesky
factors, inverse) and the rotation's temporaries are what grows with the layer's input size; on a GPU
the same code holds the same copies.

    python benchmarks/solver_memory.py --inputs 4096 --rows 64 --method pvq
"""

from __future__ import annotations

import argparse
import gc
import os
import resource

import torch

from pvq.models import QuantizeConfig
from pvq.solvers import HessianAccumulator, quantize_linear
from pvq.transforms.rotation import LayerRotation


def rss() -> int:
    return int(open(f"/proc/{os.getpid()}/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inputs", type=int, default=4096)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--method", default="pvq")
    p.add_argument("--bits", type=float, default=3.0)
    p.add_argument("--no-rotation", action="store_true", help="solve in the layer's own coordinates")
    a = p.parse_args()
    torch.set_num_threads(1)
    cfg = QuantizeConfig(method=a.method, bits=a.bits)
    acc = HessianAccumulator(a.inputs)
    acc.add(torch.randn(2048, a.inputs))
    w = torch.randn(a.rows, a.inputs, dtype=torch.float64) * 0.02
    codec = cfg.make_codec(8, 16)
    rot = None if a.no_rotation else LayerRotation(a.rows, a.inputs, None, 1)
    gc.collect()
    start = max(rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    quantize_linear(w, getattr(acc, "take", acc.hessian)(), codec, rot, cfg.solver_config())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    hb = a.inputs * a.inputs * 8
    print(f"{a.method} {a.bits:g} bits, {a.rows} x {a.inputs}: Hessian {hb / 2**20:.0f} MiB; "
          f"peak during the solve {(peak - start) / hb:.2f} Hessians above the start "
          f"({'with' if rot is not None else 'no'} input rotation; the handed Hessian is in the start)")


if __name__ == "__main__":
    main()
