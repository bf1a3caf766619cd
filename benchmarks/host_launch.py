"""What each piece of one block's products costs the host to launch at prefill, on a GPU (docs/kernels.md,
session 27): where a 7B model's 512-token prefill is bound by the host (session 26), which calls take its time.

    python benchmarks/host_launch.py [--methods fp16,pvq3] [--rows 512] [--calls 40] [--rotation auto]

One block of the 7B-shaped Llama of :mod:`benchmarks.generate` (same random codes, q/k/v and gate/up merged as
``pvq generate`` runs them on CUDA). Each row is a call's host time to launch, in microseconds: ``--calls`` calls
back to back without a sync, the median of five such runs over ``--calls`` (the GPU keeps up, or the queue
holds them: nothing waits). Rows: the attention's projections, the MLP and the whole block through the model's
modules; for a pvq row also its parts: ``torch.empty`` of a decoded layer, the Triton decode (its launch through
Triton's JIT dispatch, and the same compiled kernel launched straight, the floor of a Triton launch), the
cuBLAS product of the decoded weight, and the gated rotation of down_proj's input. Off CUDA it refuses to run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _device import benchmark_device, device_name  # noqa: E402
from generate import (SETTINGS, add_shape_arguments, fresh_llama, merge, phase, resolve_plan, say,  # noqa: E402
                      to_quantized)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def host_us(fn, calls: int, device: torch.device, runs: int = 5) -> float:
    """Median over ``runs`` of the host's microseconds a call, ``calls`` calls launched back to back."""
    for _ in range(3):
        fn()
    sync(device)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t) / calls * 1e6)
        sync(device)
    return statistics.median(times)


def block_calls(model, rows: int, device: torch.device) -> dict:
    """``{name: call}`` of block 0's pieces on random rows ``[1, rows, hidden]`` of the model's dtype."""
    block = model.model.layers[0]
    hidden = model.config.hidden_size
    x = torch.randn(1, rows, hidden, device=device, dtype=model.dtype)
    attn = block.self_attn
    positions = torch.arange(rows, device=device)[None]
    embeddings = model.model.rotary_emb(x, positions)
    return {
        "q/k/v projections": lambda: (attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)),
        "o_proj": lambda: attn.o_proj(x),
        "MLP (gate/up, act, down)": lambda: block.mlp(x),
        "whole block": lambda: block(x, position_embeddings=embeddings),
    }


def decode_parts(model, rows: int, device: torch.device) -> dict:
    """``{name: call}`` of the parts of one quantized product (the MLP's down projection, ``[hidden, MLP]``)."""
    from pvq.kernels import backend as kernels

    mlp = model.model.layers[0].mlp
    layer = mlp.down_proj
    dtype = model.dtype
    gate = torch.randn(rows, layer.in_features, device=device, dtype=dtype)
    layer(gate)  # prepares the runtime
    runtime = layer.runtime_tensors()
    rt, family = runtime["runtime"], runtime["family"]
    _, decode = family.kernels()
    weight = decode(rt, dtype)
    parts = {
        "torch.empty of the decoded layer": lambda: torch.empty(layer.out_features, layer.in_features,
                                                                 dtype=dtype, device=device),
        f"decode ({family.name})": lambda: decode(rt, dtype),
        "cuBLAS product of the decoded layer": lambda: gate @ weight.T,
        "layer forward (rotation, decode, product)": lambda: layer(gate),
        "gated forward (act, rotation, decode, product)": lambda: layer.gated_forward(gate, gate, "silu"),
    }
    rh = kernels._gated_rotation(layer)
    if rh is not None:
        rotate = kernels._kernel("triton_hadamard.gated_hadamard_rotate")
        parts["gated rotation"] = lambda: rotate(rh, gate, gate, "silu")
    straight = straight_decode(rt, weight) if hasattr(rt, "row_groups") else None
    if straight is not None:
        parts["decode's compiled kernel, arguments ready"] = straight
    return parts


def straight_decode(rt, reference: torch.Tensor):
    """The rows decode's compiled kernel launched through ``CompiledKernel[grid]`` (no JIT dispatch), checked bit
    for bit against ``reference``; None (and why, printed) where this Triton takes other arguments."""
    from pvq.kernels import triton_rows

    kernel = triton_rows._rows_decode_kernel
    out = torch.empty_like(reference)
    grid = (rt.row_groups, rt.steps)
    args = [rt.words, rt.row_scales, rt.levels, rt.leaves, rt.inverse_norms, out, rt.out_features, rt.steps,
            rt.in_features]
    constexprs = dict(F=rt.field_bits, A=rt.leaf_bits, LG=rt.gain_bits, BF16=False, POINTS=rt.whole_points)
    compiled = kernel[grid](*args, **constexprs, num_warps=4)
    if not hasattr(compiled, "__getitem__"):  # Triton's CPU interpreter returns no compiled kernel
        say("  no compiled kernel to launch straight (Triton's interpreter)")
        return None
    for name, full in (("all arguments", args + list(constexprs.values())), ("non-constexpr arguments", args)):
        out.zero_()
        try:
            compiled[grid + (1,)](*full)  # a compiled kernel's grid has all three dimensions
            sync(reference.device)
        except (TypeError, RuntimeError, IndexError, ValueError) as e:
            say(f"  straight launch with {name}: {type(e).__name__}: {str(e)[:150]}")
            continue
        if torch.equal(out, reference):
            say(f"  straight launch takes {name}; its decode equals the package's bit for bit")
            launch = compiled[grid + (1,)]
            return lambda: launch(*full)
        say(f"  straight launch with {name}: output differs from the package's decode")
    return None


LAUNCHERS = (("triton_rows", "_ROWS_DECODE"), ("triton_hadamard", "_GATED"), ("triton_hadamard", "_ROTATE"),
             ("triton_hadamard", "_ROTATE_TILED"))
"""The package's straight launchers (module of :mod:`pvq.kernels`, name) that a ``launches: jit`` row replaces."""


@contextlib.contextmanager
def jit_launches(jit: bool):
    """With ``jit``: every launcher of :data:`LAUNCHERS` sends its launches through Triton's JIT dispatch."""
    import importlib

    from pvq.kernels.triton_launch import StraightLauncher

    saved = []
    if jit:
        for module, name in LAUNCHERS:
            mod = importlib.import_module(f"pvq.kernels.{module}")
            saved.append((mod, name, getattr(mod, name)))
            setattr(mod, name, StraightLauncher(getattr(mod, name).kernel, straight=False))
    try:
        yield
    finally:
        for mod, name, launcher in saved:
            setattr(mod, name, launcher)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_arguments(p)
    p.set_defaults(layers=1)
    p.add_argument("--methods", default="fp16,pvq3", help=f"fp16, {', '.join(SETTINGS)}")
    p.add_argument("--rows", type=int, default=512, help="prompt rows (above 16: the decode + cuBLAS path)")
    p.add_argument("--calls", type=int, default=40)
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--rotation", default="auto", help="auto (each method's plan), layer, fused or fused:B")
    p.add_argument("--device", default=None, help="default: cuda; cpu only under TRITON_INTERPRET=1 (smoke test)")
    a = p.parse_args()
    methods = a.methods.split(",")
    if any(m not in ("fp16", *SETTINGS) for m in methods):
        p.error(f"--methods: fp16, {', '.join(SETTINGS)}; got {a.methods}")
    if a.rows <= 16:
        p.error(f"--rows: more than 16 (prefill's decode + cuBLAS path), got {a.rows}")
    device = benchmark_device(p, a.device)
    import triton

    say(f"device {device_name(device)}, torch {torch.__version__}, triton {triton.__version__}")
    with phase("importing pvq and its kernels"):
        import pvq.kernels  # noqa: F401
        from pvq.models.qlinear import set_backend
    table, coded = [], {}
    with torch.no_grad():
        for method in methods:
            model = fresh_llama(a, device)
            label = method
            if method in SETTINGS:
                plan = resolve_plan(a.rotation, *SETTINGS[method][:2], a.intermediate)
                to_quantized(model, method, a.dim, plan, device, coded)
                label = f"{method} ({plan})"
            if device.type == "cuda":
                merge(model)
            if method in SETTINGS:
                set_backend(model, "triton")
            for jit in (False, True) if method in SETTINGS else (False,):
                row = f"{label}, launches: jit" if jit else label
                with phase(f"{row}: host launch times, {a.rows} rows"), jit_launches(jit):
                    calls = block_calls(model, a.rows, device)
                    if method in SETTINGS:
                        calls.update(decode_parts(model, a.rows, device))
                    for name, fn in calls.items():
                        table.append((row, name, host_us(fn, a.calls, device)))
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(f"\nHost time to launch, us a call ({a.rows} rows, one block: hidden {a.hidden}, MLP {a.intermediate}; "
          f"median of 5 runs of {a.calls} calls)\n")
    print("| method | call | host us |")
    print("|---|---|---|")
    for label, name, us in table:
        print(f"| {label} | {name} | {us:.1f} |")


if __name__ == "__main__":
    main()
