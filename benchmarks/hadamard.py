"""The randomized Hadamard of activations on one GPU: the CUDA and Triton kernels against the PyTorch path.

    python benchmarks/hadamard.py [--sizes 4096,11008,8192,28672] [--rows 1,16]

Microseconds (median of ``triton.testing.do_bench_cudagraph``: launches replayed in a CUDA graph, as a
decode step runs them) of ``RandomizedHadamard.forward`` (PyTorch: sign
multiply, radix-64 FWHT matmuls, the dense factor, casts) and of ``hadamard_rotate`` where it takes the
size, and of the CUDA kernel (``hadamard_rotate_cuda``, where nvcc and ninja compile it), for fp16 rows; for sizes
with a dense factor also the two products in fp16 (``hadamard_rotate_matmul``, prefill's rows; in brackets its largest
relative difference from the PyTorch path, per row norm). ``--skip-cuda``: no CUDA column (no build).
"""

from __future__ import annotations

import argparse

import torch
import triton.testing

from pvq.kernels import cuda_hadamard
from pvq.kernels.cuda_build import cuda_build_available
from pvq.kernels.matmul_hadamard import hadamard_rotate_matmul
from pvq.kernels.triton_hadamard import hadamard_rotate, supported
from pvq.transforms import RandomizedHadamard


def _us(fn) -> float:
    """Median microseconds of ``fn`` replayed in a CUDA graph."""
    return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median") * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="4096,11008,8192,28672,14336")
    p.add_argument("--rows", default="1,16")
    p.add_argument("--variants", action="store_true",
                   help="also time the kernel with tf32x3 products and with 8 warps (error against PyTorch in brackets)")
    p.add_argument("--skip-cuda", action="store_true", help="no CUDA kernel column (nothing compiled)")
    a = p.parse_args()
    variants = [("tf32x3", 4), ("ieee", 8), ("tf32x3", 8)] if a.variants else []
    extra = "".join(f" {prec} {w} warps us [max err] |" for prec, w in variants)
    with_cuda = not a.skip_cuda and cuda_build_available() and cuda_hadamard._extension() is not None
    print("| n | h x p | rows | PyTorch us | Triton kernel us | CUDA kernel us | two fp16 products us [rel diff] |" + extra)
    print("|---|---|---|---|---|---|---|" + "---|" * len(variants))
    for n in (int(v) for v in a.sizes.split(",")):
        rh = RandomizedHadamard(n, seed=0)
        for rows in (int(v) for v in a.rows.split(",")):
            x = torch.randn(rows, n, device="cuda").half()
            torch_us = _us(lambda: rh.forward(x))
            kern = cuda = "-"
            if with_cuda and cuda_hadamard.supported(rh):
                cuda = f"{_us(lambda: cuda_hadamard.hadamard_rotate_cuda(rh, x)):.1f}"
            cells = ["-"] * len(variants)
            if supported(rh):
                kern = f"{_us(lambda: hadamard_rotate(rh, x)):.1f}"
                xf = x.float()
                ref = rh.forward(xf)
                for i, (prec, w) in enumerate(variants):
                    us = _us(lambda: hadamard_rotate(rh, x, precision=prec, num_warps=w))
                    err = float((hadamard_rotate(rh, xf, precision=prec, num_warps=w) - ref).abs().max())
                    cells[i] = f"{us:.1f} [{err:.1e}]"
            products = "-"
            if rh.dense_order > 1:
                ref = rh.forward(x.float())
                diff = float(((hadamard_rotate_matmul(rh, x).float() - ref).norm(dim=1) / ref.norm(dim=1)).max())
                products = f"{_us(lambda: hadamard_rotate_matmul(rh, x)):.1f} [{diff:.1e}]"
            tail = "".join(f" {c} |" for c in cells)
            print(f"| {n} | {rh.dense_order} x {rh.pow2_order} | {rows} | {torch_us:.1f} | {kern} | {cuda} | {products} |{tail}",
                  flush=True)


if __name__ == "__main__":
    main()
