"""The leaf-pair layout's CUDA product on one GPU: build, check, time against fp16, torch int4 and the
split-order CUDA product (docs/kernels.md, session 8).

    python benchmarks/speed_layout_device.py [--shapes 11008x4096,...] [--batches 1,2,4,8,16] [--bits 2,3]
    python benchmarks/speed_layout_device.py --cpu   # the layout phases on a tiny layer, no kernels (CI machines)

Phases, each printed with its time: (1) compile both CUDA products; (2) check the leaf-pair product
against its float32 reference on random valid codes of awkward sizes (1 to 16 rows, fp16 / bf16 / one
fp32 row; the transcoded decodes equal bit for bit to the split-order reference), both layouts; (3) per shape and rate:
random valid codes (no quantization: the kernels' speed does not depend on the weights), the
transcoded layout and its memory against the stored bytes, then microseconds replayed from CUDA graphs
(``triton.testing.do_bench_cudagraph``, median) for fp16 cuBLAS, torch's int4 kernel (group 128, bf16,
as benchmarks/kernel_speed.py), the split-order CUDA product (what the backend ran before: up to 8 rows
fused, 16 through its whole-layer decode and cuBLAS), the leaf-pair product (``leaf``; 16 rows: two
launches of 8; at 8 rows also as two launches of 4), the row-interleaved leaf-pair product (``rows``: a
lane an output row) and its whole-point form (``points``, up to 2 bits: one 16-bit field and one table word a vector;
session 23). A final table. At the last batch size the whole-layer decodes are timed too (``-decode``:
to float32, ``-decode16``: to fp16; the Triton decode, pvq/kernels/triton_rows.py, which replaced a CUDA one in
session 18), beside ``fp16-fill``: filling a tensor of the layer's fp16 size, the floor of any decode that writes
it (session 22), and with ``--prefill`` the fp16 decode + cuBLAS (``rows3``: what the backend runs above 16 rows).

    python benchmarks/speed_layout_device.py --rows-variant head:@old.cu --rows-variant x:SOME_MACRO=1

times the row products (leaf pairs and whole points) a second (third) time through leafrow8_gemv.cu built with those
defines, or another version of the source, in the same run (columns ``rows3-head``, ``points2-head`` ...), each first
compared with the package's product (a variant off it by more than VARIANT_TOLERANCE is reported, not timed): how an
experiment is kept or reverted (session 24: session 23's tables expanded at staging, measured slower and left; the
tensor-core kernel at 16 warps, kept: docs/kernels.md, session 24).
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pvq.codecs import make_codec, quantize_grouped  # noqa: E402
from pvq.codecs.pyramid_counts import pyramid_count  # noqa: E402
from pvq.kernels import cuda_leaf, cuda_split  # noqa: E402
from pvq.kernels.leaf_layout import _pack_rows, leaf_decode_reference, leaf_runtime_from_split  # noqa: E402
from pvq.kernels.leaf_rows import leaf_rows_decode_reference, leaf_rows_from_split, point_rows_supports  # noqa: E402
from pvq.kernels.triton_rows import leaf_rows_decode_triton  # noqa: E402
from pvq.kernels.split_runtime import split_decode_reference, split_runtime  # noqa: E402
from pvq.models import QuantizedLinear  # noqa: E402
from _cold import cold_bench, l2_cache_bytes, weight_bytes, weight_copy  # noqa: E402
from _variants import build_variant, parse_variant, variant_extension  # noqa: E402
from pvq.models.backends import programmatic_launches  # noqa: E402

T0 = time.perf_counter()
ROWS_BUILT = True  # leafrow8_gemv.cu compiled (else its checks and columns are left out)
LAYOUTS = ("split", "leaf", "rows", "points")  # the layouts timed (--layouts)
PREFILL: tuple = ()  # prefill rows timed (--prefill): fp16, int4 and the rows layout's decode + cuBLAS
COLD = 0.0  # --cold F: also each goal column with its weights out of L2 (a ring of copies over F x L2; _cold.py)


def phase(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", flush=True)


def tiny_layer(bits: float, group: int, device) -> QuantizedLinear:
    """A one-row layer of the codec (its runtime is the template the random layouts are made from)."""
    codec = make_codec("pvq", bits, 8, group_size=group)
    w = torch.randn(1, 8 * group, device=device) * 0.02
    stored = quantize_grouped(codec, w.reshape(-1, 8)).stored.tensors
    q = QuantizedLinear(8 * group, 1, {"name": codec.name, **codec.config()},
                        {k: (tuple(v.shape), v.dtype) for k, v in stored.items()}, device=device)
    for k, v in stored.items():
        getattr(q, "scales" if k == "scale" else f"packed_{k}").copy_(v)
    return q


def random_split_runtime(bits: float, group: int, out_f: int, in_f: int, seed: int, device):
    """A split-order runtime of ``[out_f, in_f]`` with uniformly random valid codes and scales in [0.5, 1.5)
    (the stored layout of such a layer: a bitstream of ``code_bits`` per vector)."""
    rt = split_runtime(tiny_layer(bits, group, device), device)
    g = torch.Generator(device=device).manual_seed(seed)
    n = out_f * in_f // 8
    codes = torch.randint(0, pyramid_count(8, rt.pulses) * rt.num_levels, (n,), generator=g, device=device)
    words = torch.zeros((n * rt.code_bits + 31) // 32 + 1, dtype=torch.int64, device=device)
    _pack_rows(codes, n, rt.code_bits, words.numel(), 0, words)
    words = torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)[: (n * rt.code_bits + 31) // 32]
    scales = (torch.rand(n // group, generator=g, device=device) + 0.5).half()
    return dataclasses.replace(rt, out_features=out_f, in_features=in_f, words=words, scales=scales)


def stored_bytes(srt) -> int:
    """Bytes of the stored codes and scales (what the checkpoint holds for the layer)."""
    return (srt.num_vectors * srt.code_bits + 7) // 8 + srt.scales.numel() * 2


def bench(fn) -> float:
    import triton.testing

    return float(triton.testing.do_bench_cudagraph(fn, rep=60, return_mode="median")) * 1000.0


CHECKS = [(3.0, 16, 300, 4096), (3.0, 3, 37, 4104), (2.0, 4, 67, 8800), (2.5, 5, 1, 13000), (1.5, 5, 5, 40),
          (3.0, 8, 5, 25600), (3.0, 16, 2003, 256), (2.0, 16, 129, 11008)]


ROW_CHECKS = [(3.0, 300, 4096), (3.0, 37, 4224), (2.0, 67, 8832), (2.5, 1, 13056), (1.5, 5, 128),
              (3.0, 2003, 256), (3.0, 5, 16384), (2.0, 129, 11008)]


def check(device) -> int:
    """Leaf-pair product against the reference; returns the number of failures (printed)."""
    fails = 0
    for bits, group, out_f, in_f in CHECKS:
        srt = random_split_runtime(bits, group, out_f, in_f, seed=out_f + in_f, device=device)
        rt = leaf_runtime_from_split(srt)
        w = leaf_decode_reference(rt)
        same = torch.equal(w, split_decode_reference(srt))
        fails += not same
        worst = 0.0
        for batch in (1, 2, 3, 4, 5, 8, 11, 16):
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                if dtype == torch.float32 and batch > 1:
                    continue
                if batch > 1 and in_f > cuda_leaf.LEAF_ROWS_MAX_IN_FEATURES:
                    continue
                x = torch.randn(batch, in_f, device=device, generator=torch.Generator(device).manual_seed(batch))
                x = x.to(dtype)
                ref = x.float() @ w.T
                tol = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
                err, ok = _compare(cuda_leaf.leaf_gemv_cuda(rt, x).float(), ref, tol)
                worst = max(worst, err / tol)
                if not ok:
                    fails += 1
                    print(f"  FAIL {bits} bits G={group} {out_f}x{in_f} rows={batch} {dtype}: max err {err:.3g} "
                          f"of the largest output (tolerance {tol})", flush=True)
        print(f"  {bits} bits G={group} {out_f}x{in_f}: decode == split reference: {same}; rows 1..16 x dtypes: "
              f"worst error {worst:.2f} of its tolerance", flush=True)
    row_checks = [(bits, out_f, in_f, points) for bits, out_f, in_f in ROW_CHECKS for points in (False, True)
                  if not points or point_rows_supports(make_codec("pvq", bits, 8, group_size=16))]
    for bits, out_f, in_f, points in row_checks if ROWS_BUILT else []:  # the row-interleaved layout (groups of 16)
        srt = random_split_runtime(bits, 16, out_f, in_f, seed=out_f + in_f, device=device)
        rt = leaf_rows_from_split(srt, whole_points=points)
        w = leaf_rows_decode_reference(rt)
        same = torch.equal(w, split_decode_reference(srt))
        triton_decode = all(torch.equal(leaf_rows_decode_triton(rt, dt), w.to(dt))  # the Triton decode, likewise
                            for dt in (torch.float32, torch.float16, torch.bfloat16))
        name = "points-layout" if points else "rows-layout"
        if not triton_decode:
            print(f"  FAIL {name} {bits} bits {out_f}x{in_f}: the Triton whole-layer decode differs", flush=True)
        fails += (not same) + (not triton_decode)
        worst = 0.0
        for batch in (1, 2, 3, 4, 5, 8, 11, 16):
            for dtype in (torch.float16, torch.bfloat16):
                x = torch.randn(batch, in_f, device=device, generator=torch.Generator(device).manual_seed(batch))
                x = x.to(dtype)
                ref = x.float() @ w.T
                tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
                for tc, xg in ((True, True), (True, False), (False, None)) if batch > 1 else ((True, None),):
                    got = cuda_leaf.leaf_rows_gemv_cuda(rt, x, tensor_cores=tc, x_from_global=xg).float()
                    err, ok = _compare(got, ref, tol)
                    worst = max(worst, err / tol)
                    if not ok:
                        fails += 1
                        print(f"  FAIL {name} {bits} bits {out_f}x{in_f} rows={batch} {dtype} tensor cores "
                              f"{tc}, x from global memory {xg}: max err {err:.3g}", flush=True)
        print(f"  {name} {bits} bits {out_f}x{in_f}: decode == split reference: {same}; rows 1..16 x dtypes: "
              f"worst error {worst:.2f} of its tolerance", flush=True)
    return fails


def _compare(got: torch.Tensor, ref: torch.Tensor, tol: float) -> tuple[float, bool]:
    """(largest error / largest output, whether ``got`` is within ``tol`` of ``ref`` elementwise)."""
    err = ((got - ref).abs().max() / ref.abs().max().clamp(min=1e-30)).item()
    return err, got.shape == ref.shape and torch.allclose(got, ref, rtol=tol, atol=tol * ref.abs().max().item())


def baselines(x: torch.Tensor, w: torch.Tensor, int4) -> dict[str, float]:
    """Microseconds of what a user would run instead: fp16 ``x @ w.T`` (cuBLAS) and torch's int4 kernel (bf16)."""
    row = {"fp16": bench(lambda: x @ w.T)}
    if int4 is not None:
        xb = x.bfloat16()
        row["int4"] = bench(lambda: int4[0](xb))
    return row


def timings(shapes, batches, bit_list, device) -> list[tuple]:
    from kernel_speed import int4_setup

    from pvq.kernels.triton_split import split_decode

    table = []
    for out_f, in_f in shapes:
        w = (torch.randn(out_f, in_f, device=device) * 0.02).half()
        int4 = int4_setup(w)
        rts = {}
        for bits in bit_list:
            t = time.perf_counter()
            srt = random_split_runtime(bits, 16, out_f, in_f, seed=1, device=device)
            rt = leaf_runtime_from_split(srt)
            rrt = leaf_rows_from_split(srt)
            points = point_rows_supports(make_codec("pvq", bits, 8, group_size=16)) and "points" in LAYOUTS
            prt = leaf_rows_from_split(srt, whole_points=True) if points else None
            torch.cuda.synchronize()
            sb, lb, rb = stored_bytes(srt), rt.code_bytes(), rrt.code_bytes()
            pb = prt.code_bytes() if points else 0
            phase(f"{out_f}x{in_f} {bits} bits: random codes + transcode {time.perf_counter() - t:.2f} s; codes "
                  f"stored {sb / 1e6:.2f} MB ({8 * sb / (out_f * in_f):.3f} b/w), leaf layout {lb / 1e6:.2f} MB "
                  f"({8 * lb / (out_f * in_f):.3f} b/w, {lb / sb:.3f}x stored), row-interleaved {rb / 1e6:.2f} MB "
                  f"({8 * rb / (out_f * in_f):.3f} b/w, {rb / sb:.3f}x stored)" + (
                      f", whole points {pb / 1e6:.2f} MB ({8 * pb / (out_f * in_f):.3f} b/w, {pb / sb:.3f}x stored)"
                      if points else ""))
            rts[bits] = (srt, rt, rrt, prt)
            if "quads" in LAYOUTS:  # the same codes in the quad order (session 29), both field formats
                QUADS[bits] = (leaf_rows_from_split(srt, quad_swapped=True),
                               leaf_rows_from_split(srt, whole_points=True, quad_swapped=True) if points else None)
        for batch in batches:
            x = torch.randn(batch, in_f, device=device).half()
            row = baselines(x, w, int4)
            for bits, (srt, rt, rrt, prt) in rts.items():
                if prt is not None:  # whole points: the row kernels with one table word a vector
                    row[f"points{bits:g}"] = bench(lambda: cuda_leaf.leaf_rows_gemv_cuda(prt, x))
                    if batch > 1:
                        row[f"points{bits:g}-fma"] = bench(
                            lambda: cuda_leaf.leaf_rows_gemv_cuda(prt, x, tensor_cores=False))
                        row[f"points{bits:g}-mma-global"] = bench(
                            lambda: cuda_leaf.leaf_rows_gemv_cuda(prt, x, tensor_cores=True, x_from_global=True))
                    if batch == batches[-1]:
                        row[f"points{bits:g}-decode16"] = bench(lambda: cuda_leaf.leaf_rows_decode(prt, torch.float16))
                if "split" in LAYOUTS and batch <= cuda_split.CUDA_MAX_ROWS:
                    row[f"split{bits:g}"] = bench(lambda: cuda_split.split_gemv_cuda(srt, x))
                elif "split" in LAYOUTS:
                    row[f"split{bits:g}"] = bench(lambda: x @ split_decode(srt).to(x.dtype).T)
                if "leaf" in LAYOUTS:
                    row[f"leaf{bits:g}"] = bench(lambda: cuda_leaf.leaf_gemv_cuda(rt, x))
                if ROWS_BUILT:
                    row[f"rows{bits:g}"] = bench(lambda: cuda_leaf.leaf_rows_gemv_cuda(rrt, x))
                    if batch > 1:  # both several-row kernels, and both sources of x, whichever the default picks
                        row[f"rows{bits:g}-fma"] = bench(
                            lambda: cuda_leaf.leaf_rows_gemv_cuda(rrt, x, tensor_cores=False))
                        for xg, src in ((False, "shared"), (True, "global")):
                            row[f"rows{bits:g}-mma-{src}"] = bench(
                                lambda: cuda_leaf.leaf_rows_gemv_cuda(rrt, x, tensor_cores=True, x_from_global=xg))
                    for layout, lrt in (("rows", rrt), ("points", prt)):  # the same calls through experiments' builds
                        if lrt is not None and VARIANTS:
                            time_variants(row, f"{layout}{bits:g}", lrt, x)
                    if batch == batches[-1]:  # what the backend runs above 16 rows: decode + cuBLAS
                        row[f"rows{bits:g}-decode"] = bench(lambda: cuda_leaf.leaf_rows_decode(rrt))
                        # to fp16 (what prefill multiplies)
                        row[f"rows{bits:g}-decode16"] = bench(lambda: cuda_leaf.leaf_rows_decode(rrt, torch.float16))
                if bits in QUADS:
                    time_quads(row, bits, (rrt, prt), QUADS[bits], x)
                if batch == 8 and "leaf" in LAYOUTS:
                    ext = cuda_leaf._extension()
                    row[f"leaf{bits:g}-2x4"] = bench(lambda: torch.cat([cuda_leaf._launch(ext, rt, x[:4]),
                                                                        cuda_leaf._launch(ext, rt, x[4:])]))
            if COLD:
                time_cold(row, x, w, int4, {f"{m}{b:g}": rt_ for b, (_, _, rrt, prt) in rts.items()
                                            for m, rt_ in (("rows", rrt), ("points", prt)) if rt_ is not None}
                          | {f"{m}q{b:g}": rt_ for b, q in QUADS.items() for m, rt_ in zip(("rows", "points"), q)
                             if rt_ is not None})
            if batch == batches[-1] and ROWS_BUILT:  # the floor of any decode to fp16: writing the layer's bytes
                filled = torch.empty(out_f, in_f, dtype=torch.float16, device=device)
                row["fp16-fill"] = bench(lambda: filled.fill_(1.0))
                del filled
            phase(f"{out_f}x{in_f} batch {batch}: " + ", ".join(f"{k} {v:.1f} us" for k, v in row.items()))
            table.append((f"{out_f}x{in_f}", batch, row))
        for rows in PREFILL:  # prefill: pvq decodes once to fp16 and multiplies by cuBLAS
            x = torch.randn(rows, in_f, device=device).half()
            row = baselines(x, w, int4)
            for bits, (srt, rt, rrt, prt) in rts.items():
                if ROWS_BUILT:
                    row[f"rows{bits:g}"] = bench(lambda: x @ cuda_leaf.leaf_rows_decode(rrt, torch.float16).T)
                if prt is not None:
                    row[f"points{bits:g}"] = bench(lambda: x @ cuda_leaf.leaf_rows_decode(prt, torch.float16).T)
            phase(f"{out_f}x{in_f} prefill {rows} rows: " + ", ".join(f"{k} {v:.1f} us" for k, v in row.items()))
            table.append((f"{out_f}x{in_f}", rows, row))
        del rts, w
        QUADS.clear()
        torch.cuda.empty_cache()
    return table


def time_cold(row: dict, x: torch.Tensor, w: torch.Tensor, int4, layouts: dict) -> None:
    """``row[NAME-cold]``: fp16, int4 and each routed pvq product (``layouts``: column name -> runtime) with its
    weights read from device memory on every call (benchmarks/_cold.py: a ring of copies over COLD x L2); the pvq
    products also through each experiment's build (``NAME-VARIANT-cold``; compared warm by time_variants)."""
    from kernel_speed import int4_setup

    l2 = l2_cache_bytes(x.device)
    row["fp16-cold"] = cold_bench(bench, w.clone, lambda wc: x @ wc.T, weight_bytes(w), l2, COLD)
    if int4 is not None:
        xb = x.bfloat16()
        row["int4-cold"] = cold_bench(bench, lambda: int4_setup(w)[0], lambda f: f(xb), int4[1], l2, COLD)
    for name, rt in layouts.items():  # the table of points shared, as a model's layers of one rate share it
        if not ROWS_BUILT:
            continue
        for suffix, within in [("", nullcontext), *((f"-{v}", w) for v, w in VARIANTS.items())]:  # and each experiment
            with within():
                row[f"{name}{suffix}-cold"] = cold_bench(bench, lambda: weight_copy(rt, SHARED_TABLES),
                                                         lambda c: cuda_leaf.leaf_rows_gemv_cuda(c, x),
                                                         weight_bytes(rt, SHARED_TABLES), l2, COLD)


SHARED_TABLES = ("leaves",)  # leaf_rows.py: shared_leaves / shared_point_table, one a device and rate


QUADS: dict = {}
"""bits -> (leaf pairs, whole points or None) of the shape being timed, in the quad order (``--layouts ...,quads``)."""


def time_quads(row: dict, bits: float, plain: tuple, quads: tuple, x: torch.Tensor) -> None:
    """``row[rowsq3]``, ``row[pointsq2]``: the quad-order kernels as the package routes them (one row: multiply-adds),
    the tensor-core kernel with x from global memory and staged (``-global``, ``-shared``) and the routed product
    through each experiment's build (``-NAME``), each first compared with the plain order's product of the same codes
    (:func:`checked_bench`)."""
    for name, prt, qrt in (("rows", plain[0], quads[0]), ("points", plain[1], quads[1])):
        if qrt is None:
            continue
        expected = cuda_leaf.leaf_rows_gemv_cuda(prt, x).float()
        calls = {"": (None, None), "-global": (True, True), "-shared": (True, False)}  # (tensor cores, x global)
        for suffix, (tc, xg) in calls.items():
            checked_bench(row, f"{name}q{bits:g}{suffix}", f"batch {x.shape[0]}", expected, "the plain order's",
                          lambda: cuda_leaf.leaf_rows_gemv_cuda(qrt, x, tensor_cores=tc, x_from_global=xg))
        for vname, within in VARIANTS.items():
            with within():
                checked_bench(row, f"{name}q{bits:g}-{vname}", f"batch {x.shape[0]}", expected, "the plain order's",
                              lambda: cuda_leaf.leaf_rows_gemv_cuda(qrt, x))
        if x.shape[0] == 16:  # the whole-layer decode to fp16 (prefill), each vector stored where it belongs
            same = torch.equal(cuda_leaf.leaf_rows_decode(qrt, torch.float16), cuda_leaf.leaf_rows_decode(prt, torch.float16))
            phase(f"{name}q{bits:g} decode to fp16 equal to the plain order's: {same}")
            row[f"{name}q{bits:g}-decode16"] = bench(lambda: cuda_leaf.leaf_rows_decode(qrt, torch.float16))


def checked_bench(row: dict, column: str, where: str, expected: torch.Tensor, reference: str, fn) -> None:
    """``row[column] = bench(fn)`` where ``fn()`` runs (once outside the graph capture: a refusal raised inside it breaks
    the process) and is within VARIANT_TOLERANCE of ``expected`` (``reference``'s product); else what happened is
    printed and nothing timed."""
    try:
        got = fn().float()
    except RuntimeError as e:  # e.g. a table too large for this routing's shared memory
        phase(f"{column}, {where}: {str(e).splitlines()[0]}")
        return
    err = float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-30))
    if not err <= VARIANT_TOLERANCE:  # a product that computes something else is not timed
        phase(f"{column}, {where}: off {reference} product by {err:.2e} of its largest output: not timed")
        return
    phase(f"{column}, {where}: {err:.2e} of the largest output off {reference} product")
    row[column] = bench(fn)


VARIANTS: dict = {}
"""Experiments by name: a context factory inside which the package's row products run as the experiment asks (an
experiment's build of leafrow8_gemv.cu, ``--rows-variant NAME:DEFINE[+DEFINE]``; ``pdl``: programmatic dependent
launches, ``--programmatic``)."""


def time_variants(row: dict, column: str, rt, x: torch.Tensor) -> None:
    """``row[column-NAME]``: the package's routing of ``x @ Q'^T`` through each experiment's build, and for several
    rows ``row[column-NAME-mma-global]``: its tensor-core kernel with x read from global memory (a variant whose
    table leaves no room for x in shared memory runs only so); each compared with the package's product first (a
    refusal or a different product is printed, not timed)."""
    calls = {"": {}}
    if x.shape[0] > 1:
        calls["-mma-global"] = {"tensor_cores": True, "x_from_global": True}
    for suffix, kw in calls.items():
        expected = cuda_leaf.leaf_rows_gemv_cuda(rt, x, **kw).float()
        for name, within in VARIANTS.items():
            with within():
                checked_bench(row, f"{column}-{name}{suffix}", f"variant {name}, batch {x.shape[0]}", expected,
                              "the package's", lambda: cuda_leaf.leaf_rows_gemv_cuda(rt, x, **kw))


VARIANT_TOLERANCE = 1e-2
"""Largest difference from the package's product, relative to its largest output, of a variant that is timed
(fp16 weights and fp32 sums summed in another order differ by about 1e-3)."""


def print_table(table, bit_list) -> None:
    cols = ["fp16", "int4"] + [f"{m}{b:g}" for b in bit_list for m in ("split", "leaf", "rows", "points")]
    print("\n| shape | batch | " + " | ".join(f"{c} us" for c in cols) + " | " +
          " | ".join(f"best{b:g} x fp16 | best{b:g} x int4" for b in bit_list) + " |")
    print("|---|---|" + "---|" * (len(cols) + 2 * len(bit_list)))
    for shape, batch, row in table:
        cells = [f"{row[c]:.1f}" if c in row else "-" for c in cols]
        for b in bit_list:
            leaf = min(row.get(f"{m}{b:g}", float("inf")) for m in ("leaf", "rows", "points"))
            cells += [f"{row['fp16'] / leaf:.2f}", f"{row['int4'] / leaf:.2f}" if "int4" in row else "-"]
        print(f"| {shape} | {batch} | " + " | ".join(cells) + " |")
    extra = [(s, b, r) for s, b, r in table if any("-" in k for k in r)]
    for shape, batch, row in extra:
        print(f"# {shape} batch {batch}: " + ", ".join(f"{k} {v:.1f} us" for k, v in row.items() if "-" in k))


def print_cold_table(table, bit_list) -> None:
    """The ``-cold`` columns (--cold) as a table: microseconds with the weights read from device memory, and the
    best pvq product of each order (plain: the ``triton`` backend's; quads: ``triton-rows``) against fp16."""
    cold = [(s, b, r) for s, b, r in table if "fp16-cold" in r]
    if not cold:
        return
    names = [f"{m}{b:g}" for b in bit_list for m in ("rows", "points", "rowsq", "pointsq")]
    cols = ["fp16", "int4"] + [n for n in names if any(f"{n}-cold" in r for _, _, r in cold)]
    print(f"\n# weights out of L2 (a ring of copies, {COLD:g} x L2 read between two calls of one: benchmarks/_cold.py)")
    print("| shape | batch | " + " | ".join(f"{c} us" for c in cols) + " | " +
          " | ".join(f"{b:g} b plain x fp16 | {b:g} b quads x fp16" for b in bit_list) + " |")
    print("|---|---|" + "---|" * (len(cols) + 2 * len(bit_list)))
    for shape, batch, row in cold:
        cells = [f"{row[c + '-cold']:.1f}" if c + "-cold" in row else "-" for c in cols]
        for b in bit_list:
            for order in ("", "q"):
                best = min(row.get(f"{m}{order}{b:g}-cold", float("inf")) for m in ("rows", "points"))
                cells.append(f"{row['fp16-cold'] / best:.2f}" if best < float("inf") else "-")
        print(f"| {shape} | {batch} | " + " | ".join(cells) + " |")


def cpu_dry_run() -> None:
    """The layout phases on a tiny layer on the CPU (no kernels): random codes, transcoding, references."""
    dev = torch.device("cpu")
    for bits in (2.0, 3.0):
        srt = random_split_runtime(bits, 16, 5, 256, seed=0, device=dev)
        rt = leaf_runtime_from_split(srt)
        same = torch.equal(leaf_decode_reference(rt), split_decode_reference(srt))
        same = same and torch.equal(leaf_rows_decode_reference(leaf_rows_from_split(srt)), split_decode_reference(srt))
        if point_rows_supports(make_codec("pvq", bits, 8, group_size=16)):
            same = same and torch.equal(leaf_rows_decode_reference(leaf_rows_from_split(srt, whole_points=True)),
                                        split_decode_reference(srt))
        phase(f"cpu {bits} bits 5x256: decode == split reference: {same}; leaf layout {rt.code_bytes()} B against "
              f"{stored_bytes(srt)} B stored")
        assert same


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="11008x4096,4096x4096,4096x11008,28672x8192")
    p.add_argument("--batches", default="1,2,4,8,16")
    p.add_argument("--bits", default="2,3")
    p.add_argument("--skip-check", action="store_true")
    p.add_argument("--layouts", default="split,leaf,rows,points",
                   help="the layouts timed (rows: the row-interleaved one; points: its whole-point form, up to 2 bits; "
                        "quads: both in the quad order, session 29)")
    p.add_argument("--prefill", default="", help="prefill rows to time as well, e.g. 512,2048")
    p.add_argument("--cold", type=float, default=0.0, metavar="F",
                   help="also time fp16, int4 and the routed pvq products with their weights out of L2 (columns "
                        "NAME-cold: a ring of copies, F x L2 read between two calls of one; as in a model), e.g. 3")
    p.add_argument("--cpu", action="store_true", help="the layout phases on a tiny layer on the CPU (no kernels)")
    p.add_argument("--programmatic", action="store_true",
                   help="also time the row products as programmatic dependent launches (columns NAME-pdl; session 31: "
                        "what a step compiled with inductor's PDL runs; here each follows another product)")
    p.add_argument("--rows-variant", action="append", default=[],
                   help="NAME:DEFINE[+DEFINE]: also time the row products built with these defines (an experiment)")
    a = p.parse_args()
    faulthandler.enable()  # a crash in a launch prints where it happened
    if a.cold < 0:
        p.error(f"--cold takes the L2 multiple read between two calls of one copy (e.g. 3) or 0 for none; got {a.cold}")
    for spec in a.rows_variant:  # before any build: a malformed spec exits 2 with what to write
        try:
            parse_variant(spec)
        except ValueError as e:
            p.error(str(e))
    if a.cpu:
        cpu_dry_run()
        return
    dev = torch.device("cuda")
    phase(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    t = time.perf_counter()
    with ThreadPoolExecutor(3 + len(a.rows_variant)) as pool:  # nvcc processes side by side (each about a minute)
        variants = pool.map(build_variant, a.rows_variant)
        built = list(pool.map(lambda f: f() is not None,
                              (cuda_split._extension, cuda_leaf._extension, cuda_leaf._rows_extension)))
        VARIANTS.update((name, lambda ext=ext: variant_extension(ext)) for name, ext in variants if ext is not None)
    if a.programmatic:
        VARIANTS["pdl"] = programmatic_launches
    phase(f"split8_gemv.cu, leaf8_gemv.cu, leafrow8_gemv.cu built: {built}, variants {sorted(VARIANTS)} in "
          f"{time.perf_counter() - t:.1f} s")
    assert built[0] and built[1], "split8_gemv.cu or leaf8_gemv.cu did not compile"
    global ROWS_BUILT, LAYOUTS, PREFILL, COLD
    COLD = a.cold
    ROWS_BUILT = built[2]
    LAYOUTS = tuple(a.layouts.split(","))
    PREFILL = tuple(int(r) for r in a.prefill.split(",") if r)
    if not a.skip_check:
        fails = check(dev)
        phase(f"checks done: {fails} failures")
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    bit_list = [float(b) for b in a.bits.split(",")]
    table = timings(shapes, [int(b) for b in a.batches.split(",")], bit_list, dev)
    print_table(table, bit_list)
    print_cold_table(table, bit_list)
    phase("done")


if __name__ == "__main__":
    main()
