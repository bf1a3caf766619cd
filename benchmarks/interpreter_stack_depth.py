"""Why the Triton interpreter ran 2-3x slower under pytest (docs/kernels.md, session 21): the same decode timed at
several Python stack depths and on a fresh thread. CPython 3.11 frees a frame-stack chunk as soon as its last frame
returns, so a hot loop whose calls cross a chunk's end allocates and frees one per call; tests/conftest.py runs each
test body on a fresh thread for that reason.

    python benchmarks/interpreter_stack_depth.py [--depths 0,40,60,100,200] [--repeats 1]

CPU only (the interpreter): a tiny Llama quantized at 3 bits under the fused plan, merged as ``pvq generate`` runs
it, its products on the ``triton`` backend, 2 tokens decoded through the static cache; seconds per decode.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

os.environ.setdefault("TRITON_INTERPRET", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]  # tiny_models: the tests' model factory

import torch  # noqa: E402


def quantized_tiny_llama():
    from pvq.models import QuantizeConfig, quantize_model
    from pvq.models.merging import fuse_for_decoding
    from pvq.models.qlinear import set_backend
    from tiny_models import calib, tiny

    model = tiny("llama", seed=3).eval()
    quantize_model(model, calib(4, 16), QuantizeConfig("pvq", bits=3, dim=8, rotation="fused", n_samples=4,
                                                       seq_len=16), device="cpu", progress=False, log=None)
    fuse_for_decoding(model)
    set_backend(model, "triton")
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", default="0,40,60,100,200", help="extra Python frames under the decode, comma separated")
    p.add_argument("--repeats", type=int, default=1)
    a = p.parse_args()
    try:
        depths = [int(d) for d in a.depths.split(",")]
    except ValueError:
        p.error(f"--depths takes integers, comma separated; got {a.depths}")
    if any(d < 0 or d > 800 for d in depths) or a.repeats < 1:
        p.error("--depths between 0 and 800; --repeats at least 1")
    from pvq.eval.decoding import StaticDecoder, decode

    torch.set_num_threads(1)
    model = quantized_tiny_llama()
    ids = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(3))

    def timed() -> float:
        t = time.perf_counter()
        decode(StaticDecoder(model, 1, 8), ids, 2)
        return time.perf_counter() - t

    def nested(n: int) -> float:
        return timed() if n == 0 else nested(n - 1)

    timed()  # warm-up: kernels and layouts
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}; seconds per decode (min of {a.repeats})")
    print("| where | s |\n|---|---|")
    for d in depths:
        print(f"| {d} extra frames | {min(nested(d) for _ in range(a.repeats)):.2f} |", flush=True)
    out: list[float] = []
    runner = threading.Thread(target=lambda: out.append(min(timed() for _ in range(a.repeats))))
    runner.start()
    runner.join()
    print(f"| a fresh thread | {out[0]:.2f} |")


if __name__ == "__main__":
    main()
