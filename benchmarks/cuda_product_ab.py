"""The CUDA split product of the working tree against the one of an earlier git revision, on the
same layers in one run (CUDA graphs), with each one's largest error against the float32 reference.

    python benchmarks/cuda_product_ab.py [--rev b02592c] [--shapes 11008x4096,4096x4096,4096x11008]
        [--methods pvq3-d8,pvq2-d8] [--profile]

The revision's ``pvq/kernels/csrc/split8_gemv.cu`` and ``pvq/kernels/cuda_split.py`` are written to a
temporary directory and built as a second extension (the revision's one-row interface:
``split_gemv_cuda(rt, x [1, in])``). ``--profile``: no timing, two calls of each on the first shape
and method, for ``ncu -k regex:split8 --launch-skip 2 --launch-count 2`` (session 7:
docs/bench/ab_cuda_v4_h100.txt, ncu_ab_v4_h100.txt).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import tempfile

import torch

from kernel_speed import bench, quantized_layer  # benchmarks/kernel_speed.py
from pvq.kernels import cuda_split as new
from pvq.kernels.split_runtime import split_decode_reference, split_runtime


def old_module(rev: str):
    """The revision's cuda_split module, built from its own kernel source under another extension name."""
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                          check=True).stdout.strip()

    def show(path: str) -> str:
        return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True, text=True,
                              check=True).stdout

    d = tempfile.mkdtemp(prefix="pvq_ab_")
    with open(os.path.join(d, "split8_old.cu"), "w") as f:
        f.write(show("pvq/kernels/csrc/split8_gemv.cu"))
    src = show("pvq/kernels/cuda_split.py")
    src = re.sub(r"^from \.(\w+) import", r"from pvq.kernels.\1 import", src, flags=re.M)
    src = src.replace('"pvq_split8_gemv"', '"pvq_split8_ab_old"')
    src = re.sub(r"^_SOURCE = .*$", f"_SOURCE = {os.path.join(d, 'split8_old.cu')!r}", src, flags=re.M)
    with open(os.path.join(d, "old_cuda_split.py"), "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("old_cuda_split", os.path.join(d, "old_cuda_split.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rev", default="b02592c", help="the earlier revision (session 6's last commit)")
    p.add_argument("--shapes", default="11008x4096,4096x4096,4096x11008")
    p.add_argument("--methods", default="pvq3-d8,pvq2-d8")
    p.add_argument("--profile", action="store_true")
    a = p.parse_args()
    old = old_module(a.rev)
    if new._extension() is None or old._extension() is None:
        raise SystemExit("a CUDA build failed (see the warning above)")
    for shape in a.shapes.split(","):
        out_f, in_f = (int(v) for v in shape.split("x"))
        for method in a.methods.split(","):
            q = quantized_layer(method, out_f, in_f, torch.device("cuda"))
            rt = split_runtime(q, "cuda")
            x = torch.randn(1, in_f, device="cuda", dtype=torch.float16)
            ref = x.float() @ split_decode_reference(rt).T
            y_new, y_old = new.split_gemv_cuda(rt, x), old.split_gemv_cuda(rt, x)
            if a.profile:
                for _ in range(2):
                    new.split_gemv_cuda(rt, x)
                    old.split_gemv_cuda(rt, x)
                torch.cuda.synchronize()
                return
            err = lambda y: ((y.float() - ref).abs().max() / ref.abs().max()).item()  # noqa: E731
            t_old = bench(lambda: old.split_gemv_cuda(rt, x), graphs=True)
            t_new = bench(lambda: new.split_gemv_cuda(rt, x), graphs=True)
            print(f"{shape} {method}: {a.rev} {t_old:.2f} us, working tree {t_new:.2f} us; "
                  f"max error / max |ref|: {err(y_old):.2e}, {err(y_new):.2e}", flush=True)


if __name__ == "__main__":
    main()
