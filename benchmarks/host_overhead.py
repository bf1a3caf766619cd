"""What our own Python costs a quantized product on the host (no GPU needed): a layer of a tiny quantized Llama through
the ``triton`` backend above the fused kernels' rows, its whole-layer decode replaced by a stub that returns a
ready weight and its rotations (where its plan keeps them) by stubs that return their input, timed against the bare
product it then runs.

    python benchmarks/host_overhead.py [--method pvq] [--bits 3,2] [--dim 8] [--rows 32] [--repeats 3000]

Why: a 7B model's 512-token prefill was bound by the host's launches, not the GPU (docs/kernels.md, session 26);
this is the part of a product's host time that is ours, not Triton's launcher's or cuBLAS's. Runs on the CPU under
``TRITON_INTERPRET=1`` (set here): nothing is launched, the decode is the stub.
"""

from __future__ import annotations

import argparse
import os
import sys
import timeit

os.environ.setdefault("TRITON_INTERPRET", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import torch  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="pvq")
    p.add_argument("--bits", default="3,2")
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--rows", type=int, default=32, help="input rows: above the fused kernels' 16")
    p.add_argument("--repeats", type=int, default=3000)
    a = p.parse_args()
    if a.rows <= 16:
        p.error(f"--rows: more than 16 (the whole-layer decode's path), got {a.rows}")
    import pvq.kernels  # noqa: F401  (registers the triton backend)
    from pvq.kernels import backend
    from pvq.models import QuantizeConfig, quantize_model, set_backend
    from tiny_models import calib, quantized, tiny

    print("| method | bits | kernel family | online rotations | layer forward us | bare product us | ours us |")
    print("|---|---|---|---|---|---|---|")
    for bits in (float(b) for b in a.bits.split(",")):
        model = tiny("llama", num_hidden_layers=1)
        quantize_model(model, calib(4, 16), QuantizeConfig(method=a.method, bits=bits, dim=a.dim), progress=False,
                       log=None)
        set_backend(model, "triton")
        layer = next(iter(quantized(model).values()))
        x = torch.randn(a.rows, layer.in_features)
        with torch.no_grad():
            layer(x)  # prepares the runtime (and decodes once under the interpreter)
            family = layer.runtime_tensors()["family"]
            weight = torch.randn(layer.out_features, layer.in_features)
            stubs = {family.decode: lambda runtime, dtype: weight,  # the kernels the layer would launch
                     "triton_hadamard.preferred": lambda rh, rows: True,  # the kernel that runs on the CPU
                     "triton_hadamard.hadamard_rotate": lambda rh, rows, inverse=False: rows}
            real = {}
            for qualified, stub in stubs.items():
                module, name = qualified.rsplit(".", 1)
                real[qualified] = getattr(backend._module(module), name)
                setattr(backend._module(module), name, stub)
            layer.runtime_tensors()["rotation_kernels"].clear()  # chosen again, now with the stubs
            try:
                forward = timeit.timeit(lambda: layer(x), number=a.repeats) / a.repeats * 1e6
                bare = timeit.timeit(lambda: x @ weight.T, number=a.repeats) / a.repeats * 1e6
            finally:
                for qualified, function in real.items():
                    module, name = qualified.rsplit(".", 1)
                    setattr(backend._module(module), name, function)
        rot = layer.rotation
        sides = "none" if rot is None else "+".join(s for s, t in (("input", rot.v), ("output", rot.u)) if t is not None)
        print(f"| {a.method} | {bits:g} | {family.name} | {sides} | {forward:.1f} | {bare:.1f} | {forward - bare:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
