"""One split-order PVQ layer's kernels, for a profiler: ``ncu ... python benchmarks/profile_split.py``.

    ncu --clock-control none --section SpeedOfLight --section Occupancy --section WarpStateStats \\
        --section MemoryWorkloadAnalysis -k regex:split_ --launch-skip 2 --launch-count 2 \\
        python benchmarks/profile_split.py [--shape 11008x4096] [--method pvq3-d8] [--cuda]

Runs the fused batch-1 matmul (``--cuda``: also the CUDA
kernel, ``-k regex:split`` catches ``split8_gemv_kernel``) and the whole-layer decode
three times each (the first launches compile).
"""

from __future__ import annotations

import argparse

import torch

from kernel_speed import kernels_of, quantized_layer  # benchmarks/kernel_speed.py
from pvq.kernels import triton_split as TS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="11008x4096")
    p.add_argument("--method", default="pvq3-d8")
    p.add_argument("--cuda", action="store_true", help="also the CUDA one-row kernel (pvq/kernels/cuda_split.py)")
    a = p.parse_args()
    out_f, in_f = (int(v) for v in a.shape.split("x"))
    q = quantized_layer(a.method, out_f, in_f, torch.device("cuda"))
    rt, _, _ = kernels_of(q)
    x = torch.randn(1, in_f, device="cuda").half()
    for _ in range(3):
        TS.split_matmul(rt, x)
    if a.cuda:
        from pvq.kernels.cuda_split import split_gemv_cuda

        for _ in range(3):
            split_gemv_cuda(rt, x)
    for _ in range(3):
        TS.split_decode(rt, torch.float16)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
