"""Batch 1-16 matmul of quantized layers on one GPU, against what a user would pick instead.

    python benchmarks/kernel_speed.py [--shapes 4096x4096,11008x4096,...] [--batches 1,4,16] [--json FILE] [--graphs]
    python benchmarks/kernel_speed.py --sweep --shapes 11008x4096 --methods pvq3-d8 --batches 1

Per shape (out x in) and batch: microseconds (median of triton.testing.do_bench,
L2 flushed between runs) of fp16 cuBLAS (``x @ W.T``), torch's int4 kernel
(``aten._weight_int4pack_mm``, group 128, bf16), gemlite 4- and 2-bit
(``gemlite.helper.A16Wn``, group 128, if importable), and pvq's Triton kernels (fused decode-matmul in rotated
coordinates) at about 2, 3
and 4 bits and e8 at 2 bits: the fused kernel alone (``us``; above the family's fused row limit the
whole-layer decode then cuBLAS; at batch 1 the Triton and CUDA one-row kernels of D = 8 layers at up
to 3 bits side by side) and the whole
layer through the ``triton`` backend (``us_layer``: input rotation, the kernel
or, above the family's fused row limit, decode + cuBLAS, output rotation).
Each as a ratio to fp16 and as a fraction of the memory floor: (bytes the kernel must read / measured device copy throughput,
read plus write bytes per second, as the streaming rate) / its time.
Random Gaussian weights; the codes are made on the GPU (no Hessian).
Also: whole-layer decode throughput (weights per second) on the GPU and on the CPU.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _plans import online_rotation_seeds, parse_plan

from pvq.codecs import make_codec, quantize_grouped
from pvq.kernels import kernel_family
from pvq.kernels.split_lean import lean_supported
from pvq.models import QuantizedLinear

SETTINGS = {  # name: (codec, bits, D, vectors per scale, codec options)
    "pvq2-d8": ("pvq", 2.0, 8, 16, {}), "pvq3-d8": ("pvq", 3.0, 8, 16, {}), "pvq4-d8": ("pvq", 4.0, 8, 16, {}),
    "pvq2-d16": ("pvq", 2.0, 16, 16, {}), "pvq3-d16": ("pvq", 3.0, 16, 16, {}),
    "pvq3-d8-fischer": ("pvq", 3.0, 8, 16, {"index_order": "fischer"}),
    "e8-2": ("e8", 2.0, 8, 32, {}),
}


def bench(fn, graphs: bool = False) -> float:
    """Median microseconds of ``fn``: ``triton.testing.do_bench`` (each call launched from Python, as
    eager code runs it), or with ``graphs`` replayed from a CUDA graph (launch costs gone, as in
    CUDA-graph generation; ANCHORS.md's H100 figures were taken that way)."""
    import triton.testing

    if graphs:
        return float(triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")) * 1000.0
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")) * 1000.0  # us


def copy_bandwidth(device) -> float:
    """Bytes per second of a device-to-device copy, counting bytes read and written."""
    a = torch.empty(1 << 28, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    us = bench(lambda: b.copy_(a))
    return 2 * a.numel() / (us * 1e-6)


def layer_rotation(plan: str, out_f: int, in_f: int) -> dict | None:
    """--rotation: the online rotations a layer of shape (out, in) keeps under a rotation plan (``_plans``): both
    sides under ``layer``; under ``fused`` (folded into the model) only down_proj, the one linear reading more inputs
    than it writes in a Llama block, keeps an input-side rotation (in chunks under ``fused:B``), the others none."""
    return online_rotation_seeds(plan, in_f > out_f, 1)


def quantized_layer(name: str, out_f: int, in_f: int, device, seed: int = 0, rotation: str = "layer") -> QuantizedLinear:
    """A QuantizedLinear of random Gaussian weights coded on ``device`` (rows in chunks), with the online
    rotations of ``rotation`` (:func:`layer_rotation`)."""
    codec_name, bits, dim, group, options = SETTINGS[name]
    codec = make_codec(codec_name, bits, dim, group_size=group, **options)
    g = torch.Generator(device=device).manual_seed(seed)
    parts: dict[str, list] = {}
    rows = 1024
    for r0 in range(0, out_f, rows):
        w = torch.randn(min(rows, out_f - r0), in_f, generator=g, device=device) * 0.02
        res = quantize_grouped(codec, w.reshape(-1, dim))
        for k, t in res.stored.tensors.items():
            parts.setdefault(k, []).append(t)
    stored = {k: torch.cat(v) for k, v in parts.items()}
    lin = torch.nn.Linear(in_f, out_f, bias=False, device="meta")
    q = QuantizedLinear(in_f, out_f, {"name": codec.name, **codec.config()},
                        {k: (tuple(v.shape), v.dtype) for k, v in stored.items()}, device=device,
                        rotation=layer_rotation(rotation, out_f, in_f))
    for k, v in stored.items():
        getattr(q, "scales" if k == "scale" else f"packed_{k}").copy_(v)
    del lin
    return q


def int4_setup(w: torch.Tensor):
    """torch's tinygemm int4 (group 128): packed weight and scales/zeros, or None if unavailable."""
    try:
        out_f, in_f = w.shape
        group = 128
        wg = w.float().reshape(out_f, in_f // group, group)
        lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
        scale = ((hi - lo) / 15).clamp(min=1e-6)
        q = ((wg - lo) / scale).round().clamp(0, 15).to(torch.int32).reshape(out_f, in_f)
        packed = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
        wp = torch.ops.aten._convert_weight_to_int4pack(packed, 8)
        zero = lo + 8 * scale  # tinygemm's zero point convention: w = (q - 8) * scale + zero
        sz = torch.cat([scale, zero], -1).reshape(out_f, in_f // group, 2).transpose(0, 1).contiguous().bfloat16()
        return lambda x: torch.ops.aten._weight_int4pack_mm(x, wp, group, sz), wp.numel() * wp.element_size()
    except Exception as e:  # noqa: BLE001 - an API this torch lacks
        print(f"# torch int4 unavailable: {type(e).__name__}: {str(e)[:120]}")
        return None


def gemlite_setup(w: torch.Tensor, nbits: int):
    """gemlite's grouped-int weight-only layer (``gemlite.helper.A16Wn``, group 128, fp16), or None."""
    try:
        from gemlite.helper import A16Wn
    except ImportError as e:
        print(f"# gemlite unavailable: {e}")
        return None
    try:
        out_f, in_f = w.shape
        group = 128
        wg = w.float().reshape(out_f, in_f // group, group)
        lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
        maxq = 2**nbits - 1
        scale = ((hi - lo) / maxq).clamp(min=1e-6)
        zero = -lo / scale
        wq = ((wg / scale) + zero).round().clamp(0, maxq).to(torch.uint8).reshape(out_f, in_f)
        layer = A16Wn(device=str(w.device), dtype=torch.float16).from_weights(
            wq, scale.reshape(out_f, -1).half(), zero.reshape(out_f, -1).half(), W_nbits=nbits, group_size=group)
        return layer, out_f * in_f * nbits // 8 + 2 * 2 * out_f * in_f // group
    except Exception as e:  # noqa: BLE001
        print(f"# gemlite {nbits}-bit unavailable: {type(e).__name__}: {str(e)[:200]}")
        return None


def kernels_of(q: QuantizedLinear):
    """(runtime, matmul, decode) of a layer through the backend's kernel-family table."""
    family = kernel_family(q.codec)
    return (family.runtime(q, q._buffer_device()), *family.kernels())


def _one_row_variants(rt, x) -> list:
    """(tag, call) of the one-row kernels of a D = 8 split layer: the Triton kernel, the CUDA kernel."""
    from pvq.kernels import triton_split as TS
    from pvq.kernels.cuda_build import cuda_build_available
    from pvq.kernels.cuda_split import split_gemv_cuda

    out = [("triton", lambda: TS.split_matmul(rt, x))]
    if cuda_build_available():
        out += [("cuda", lambda: split_gemv_cuda(rt, x))]
    return out


def run(shapes, batches, methods, out_json=None, graphs: bool = False, rotation: str = "layer") -> list[dict]:
    dev = torch.device("cuda")

    def timed(fn):
        return bench(fn, graphs)

    bw = copy_bandwidth(dev)
    print(f"# {torch.cuda.get_device_name()}: device copy {bw / 1e12:.2f} TB/s (read + write)")
    rows = []

    def emit(row):
        rows.append(row)
        print(" | ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        if out_json:
            with open(out_json, "w") as f:
                json.dump({"device": torch.cuda.get_device_name(), "bandwidth_bytes_per_s": bw, "rows": rows}, f,
                          indent=1)

    for out_f, in_f in shapes:
        w = (torch.randn(out_f, in_f, device=dev) * 0.02).half()
        layers = {name: quantized_layer(name, out_f, in_f, dev, rotation=rotation) for name in methods}
        kern = {n: kernels_of(q) for n, q in layers.items()}
        int4 = int4_setup(w)
        gl = {b: gemlite_setup(w, b) for b in (4, 2)}
        for batch in batches:
            x = torch.randn(batch, in_f, device=dev).half()
            fp16 = timed(lambda: x @ w.T)
            base = dict(shape=f"{out_f}x{in_f}", batch=batch)
            emit({**base, "method": "fp16", "us": fp16, "x_fp16": 1.0,
                  "floor_frac": (w.numel() * 2 / bw * 1e6) / fp16})
            if int4 is not None:
                xb = x.bfloat16()
                us = timed(lambda: int4[0](xb))
                emit({**base, "method": "torch-int4", "us": us, "x_fp16": fp16 / us,
                      "floor_frac": (int4[1] / bw * 1e6) / us})
            for nb, g in gl.items():
                if g is not None:
                    try:
                        us = timed(lambda: g[0](x))
                    except Exception as e:  # noqa: BLE001 - e.g. host work that a CUDA graph cannot capture
                        print(f"# gemlite-{nb}bit not timed: {type(e).__name__}: {e}", flush=True)
                        continue
                    emit({**base, "method": f"gemlite-{nb}bit", "us": us, "x_fp16": fp16 / us,
                          "floor_frac": (g[1] / bw * 1e6) / us})
            for name, q in layers.items():
                rt, mm, dec = kern[name]
                if batch <= kernel_family(q.codec).fused_max_rows:
                    us = timed(lambda: mm(rt, x))  # the fused kernel
                else:  # what the backend runs for that many rows: the whole-layer decode, then cuBLAS
                    us = timed(lambda: x @ dec(rt).to(x.dtype).T)
                with torch.no_grad():
                    layer = timed(lambda: q(x))  # the whole layer through the triton backend
                stored = q.stored_bits() / 8
                emit({**base, "method": name, "rotation": rotation, "bits": q.bits_per_weight(), "us": us, "x_fp16": fp16 / us,
                      "us_layer": layer, "x_fp16_layer": fp16 / layer, "floor_frac": (stored / bw * 1e6) / us})
                if batch == 1 and mm.__name__ in ("split_matmul", "split_gemv_cuda") and lean_supported(rt):
                    for tag, fn in _one_row_variants(rt, x):  # every one-row kernel of the layer, side by side
                        us = timed(fn)
                        emit({**base, "method": f"{name}-{tag}", "bits": q.bits_per_weight(), "us": us,
                              "x_fp16": fp16 / us, "floor_frac": (stored / bw * 1e6) / us})
        # whole-layer decode throughput on the GPU
        for name, q in layers.items():
            rt, _, dec = kern[name]
            us = timed(lambda: dec(rt))
            emit(dict(shape=f"{out_f}x{in_f}", batch=0, method=f"{name}-decode-gpu", us=us,
                      weights_per_s=out_f * in_f / (us * 1e-6)))
        del layers, kern, w
        torch.cuda.empty_cache()
    # decode on the CPU (the codec's own vectorized path, 2^20 weights)
    for name in methods:
        q = quantized_layer(name, 256, 4096, torch.device("cpu"))
        t0 = time.perf_counter()
        q.rotated_weight()
        s = time.perf_counter() - t0
        emit(dict(shape="256x4096", batch=0, method=f"{name}-decode-cpu", us=s * 1e6, weights_per_s=256 * 4096 / s))
    return rows


def sweep(shape, methods, batches) -> None:
    """Tile sizes and input splits of the split-order matmul, per method and batch (microseconds)."""
    from pvq.kernels import triton_split as TS

    dev = torch.device("cuda")
    out_f, in_f = shape
    for name in methods:
        q = quantized_layer(name, out_f, in_f, dev)
        rt, _, _ = kernels_of(q)
        for batch in batches:
            x = torch.randn(batch, in_f, device=dev).half()
            best = None
            for block_o in (16, 32, 64):
                for weights in (64, 128):
                    nv = max(1, weights // rt.dim)
                    for split_k in (1, 4, 8, 16):
                        try:
                            us = bench(lambda: TS.split_matmul(rt, x, block_o=block_o, nv=nv, split_k=split_k))
                        except Exception as e:  # noqa: BLE001 - a tile the compiler refuses
                            print(f"# {name} b{batch} {block_o}/{nv}/{split_k}: {type(e).__name__}")
                            continue
                        print(f"sweep {name} batch={batch} block_o={block_o} nv={nv} split_k={split_k} us={us:.1f}",
                              flush=True)
                        if best is None or us < best[0]:
                            best = (us, block_o, nv, split_k)
            print(f"BEST {name} batch={batch} default={TS.split_matmul_config(rt, batch)} best={best}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008,28672x8192")
    p.add_argument("--batches", default="1,4,16")
    p.add_argument("--methods", default=",".join(SETTINGS), help=f"of {', '.join(SETTINGS)}")
    p.add_argument("--json", default=None)
    p.add_argument("--sweep", action="store_true", help="tile sizes of the split-order matmul on the first shape")
    p.add_argument("--graphs", action="store_true", help="time each call replayed from a CUDA graph")
    p.add_argument("--rotation", default="layer",
                   help="online rotations of the pvq layers (us_layer): layer (both sides), fused (down_proj-shaped "
                        "layers, in > out, keep the input side; others none) or fused:B (that side in chunks of B)")
    a = p.parse_args()
    if parse_plan(a.rotation, ("layer", "fused")) is None:
        p.error(f"--rotation takes layer, fused or fused:B; got {a.rotation}")
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    methods = a.methods.split(",")
    batches = [int(b) for b in a.batches.split(",")]
    if a.sweep:
        sweep(shapes[0], [m for m in methods if SETTINGS[m][0] == "pvq" and not SETTINGS[m][4]], batches)
    else:
        run(shapes, batches, methods, a.json, a.graphs, a.rotation)


if __name__ == "__main__":
    main()
