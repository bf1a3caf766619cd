"""Prefill of a 7B-shaped Llama on one GPU: fp16, torch's int4 kernel and pvq (docs/kernels.md, sessions 25-26).

    python benchmarks/prefill.py [--layers 32] [--methods fp16,int4,pvq3,pvq2] [--prompts 512,2048] [--profile] \
        [--launches straight|jit|straight,jit] \
        [--rotation auto|layer|fused|fused:B] [--graph]
    TRITON_INTERPRET=1 python benchmarks/prefill.py --device cpu --layers 2 --hidden 256 --intermediate 768 \
        --vocab 512 --prompts 24 --methods fp16,pvq3 --repeats 1

The models are :mod:`benchmarks.generate`'s (same shapes, same random codes, each method's rotation plan as
``pvq quantize`` picks it (``--rotation auto``; or one plan for every pvq row, named in the row), q/k/v and gate/up merged on CUDA as ``pvq generate`` runs them). A prefill is one
forward of ``[1, P]`` prompt ids without a cache, the logits of the last position only; per row its milliseconds
(CUDA events, median of ``--repeats`` after two warm-up passes), ratio to fp16, peak GPU memory above the model's;
with ``--profile`` also the GPU time of its kernels (``torch.profiler``) and the host's time to launch the forward
(median of three):
where the host takes longer than the kernels, Python bounds the row, not the GPU. With ``--graph`` each row is also
replayed from a CUDA graph (no host: ``x fp16`` there against fp16 replayed so; peak memory not measured), and run
through ``StaticDecoder(prefill_bucket=64)`` (the prompt into a static cache, padded to a multiple of 64 tokens, from
that length's graph: what a decoder that keeps its graphs gives). Above 16
rows pvq decodes every layer to fp16 (Triton) and multiplies by cuBLAS; issue 22 asks for
prefill within 1.3x fp16. Every phase prints its seconds. Off CUDA, pvq runs the ``triton`` backend only under
``TRITON_INTERPRET=1`` (the CPU smoke run above, minutes under the interpreter; its times mean nothing).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _device import captured_graph, median_event_ms  # noqa: E402
from _plans import parse_plan  # noqa: E402
from host_launch import jit_launches  # noqa: E402
from generate import (SETTINGS, add_shape_arguments, build_cuda_kernels, check_int4, fresh_llama,  # noqa: E402
                      kernel_times, merge, phase, resolve_plan, say, to_int4, to_quantized)


def last_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """The last position's logits ``[B, V]`` of one forward without a cache."""
    try:
        out = model(input_ids=ids, use_cache=False, logits_to_keep=1)
    except TypeError:  # a transformers without logits_to_keep
        out = model(input_ids=ids, use_cache=False)
    return out.logits[:, -1]


def time_prefill(model, ids: torch.Tensor, repeats: int) -> tuple[float, int]:
    """(median milliseconds, peak bytes allocated above the start) of ``repeats`` prefills."""
    cuda = ids.is_cuda
    with torch.no_grad():
        for _ in range(2):
            last_logits(model, ids)
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            ms = median_event_ms(lambda: last_logits(model, ids), repeats)
            return ms, torch.cuda.max_memory_allocated() - base
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            last_logits(model, ids)
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), 0


def time_graph_prefill(model, ids: torch.Tensor, repeats: int) -> float:
    """Median milliseconds of ``repeats`` prefills replayed from one CUDA graph (captured after two warm-up passes on
    a side stream): the kernels without the host's launches. Raises what the capture raises."""
    with torch.no_grad():
        graph = captured_graph(lambda: last_logits(model, ids), ids.device)
        ms = median_event_ms(graph.replay, repeats)
    del graph
    torch.cuda.empty_cache()
    return ms


def time_decoder_prefill(model, ids: torch.Tensor, repeats: int, bucket: int = 64) -> float:
    """Median milliseconds of ``repeats`` prefills through :class:`pvq.eval.decoding.StaticDecoder` with
    ``prefill_bucket``: into a static cache, the prompt padded to a multiple of ``bucket`` and replayed from that
    length's CUDA graph (the first prefill captures it, untimed). RuntimeError where it ran eagerly."""
    from pvq.eval.decoding import StaticDecoder

    dec = StaticDecoder(model, batch=ids.shape[0], max_len=ids.shape[1] + bucket, prefill_bucket=bucket)
    dec.prefill(ids)
    if not dec.prefill_mode.startswith("cuda-graph"):
        raise RuntimeError(dec.prefill_mode)
    ms = median_event_ms(lambda: dec.prefill(ids), repeats)
    del dec
    torch.cuda.empty_cache()
    return ms


def profile_prefill(model, ids: torch.Tensor, top: int = 12, python: bool = False) -> dict:
    """One prefill's GPU microseconds by kernel (largest first) from ``torch.profiler``, beside the host's time to
    launch it (the forward without a sync): where the kernels' sum is far below the wall time, the host bounds it.
    ``python``: also the host's Python functions in one forward, by cumulative time (``cProfile``)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        last_logits(model, ids)
        torch.cuda.synchronize()
        hosts = []
        for _ in range(3):  # one forward's host time varies by a third from run to run (session 27)
            t = time.perf_counter()
            last_logits(model, ids)
            hosts.append((time.perf_counter() - t) * 1e3)  # launches only, unless something in the forward syncs
            torch.cuda.synchronize()
        host_ms = statistics.median(hosts)
        with warnings.catch_warnings(record=True) as syncs:  # what in the forward waits for the GPU
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                last_logits(model, ids)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
        syncs = [w for w in syncs if "called a synchronizing" in str(w.message)]  # not the mode's own notice
        if syncs:
            say(f"  {len(syncs)} synchronizing calls in one prefill; the first: {str(syncs[0].message)[:200]} "
                f"({syncs[0].filename}:{syncs[0].lineno})")
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            last_logits(model, ids)
            torch.cuda.synchronize()
        if python:
            import cProfile
            import pstats

            host = cProfile.Profile()
            host.runcall(last_logits, model, ids)
            torch.cuda.synchronize()
            pstats.Stats(host, stream=sys.stdout).sort_stats("cumulative").print_stats(40)
    rows = kernel_times(prof)
    gpu_ms = sum(r[0] for r in rows) / 1e3
    say(f"  profile, {ids.shape[1]} tokens: kernels {gpu_ms:.2f} ms of GPU time, the host {host_ms:.2f} ms to launch "
        f"the forward ({len(rows)} kernels)")
    for us, count, name in rows[:top]:
        print(f"#   {us / 1e3:8.2f} ms  {100 * us / 1e3 / gpu_ms:5.1f}%  x{count}  {name}", flush=True)
    return {"gpu_ms": gpu_ms, "host_ms": host_ms}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_arguments(p)
    p.add_argument("--methods", default="fp16,int4,pvq3,pvq2", help=f"fp16 (first), int4, {', '.join(SETTINGS)}")
    p.add_argument("--prompts", default="512,2048", help="prompt lengths (rows of every product)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--device", default=None, help="default: cuda where available")
    p.add_argument("--rotation", default="auto", help="online rotations of the pvq rows: auto (each method's plan as "
                   "pvq quantize picks it), layer, fused or fused:B (B dividing --intermediate)")
    p.add_argument("--profile", action="store_true", help="after each row: one prefill's GPU time by kernel "
                   "and the host's time to launch it (CUDA)")
    p.add_argument("--launches", default="straight", help="pvq rows' Triton launches: straight (the package's: "
                   "through the compiled kernel after a specialization's first), jit (every one through Triton's JIT "
                   "dispatch, as before session 27) or both, comma-separated")
    p.add_argument("--graph", action="store_true", help="each row also replayed from a CUDA graph (its kernels "
                   "without the host's launches), against fp16 replayed so (CUDA)")
    p.add_argument("--skip-cuda-build", action="store_true", help="do not build the CUDA extensions first (above 16 "
                   "rows the products decode through Triton; whatever else needs one builds it on first use)")
    p.add_argument("--profile-python", action="store_true", help="with --profile: also the host's Python functions "
                   "in one prefill by cumulative time (cProfile)")
    a = p.parse_args()
    methods = a.methods.split(",")
    if any(m not in ("fp16", "int4", *SETTINGS) for m in methods) or "fp16" in methods[1:]:
        p.error(f"--methods: fp16 (first, where named), int4, {', '.join(SETTINGS)}; got {a.methods}")
    try:
        prompts = [int(t) for t in a.prompts.split(",")]
    except ValueError:
        p.error(f"--prompts takes comma-separated numbers, got {a.prompts}")
    launches = a.launches.split(",")
    if not launches or any(m not in ("straight", "jit") for m in launches) or len(set(launches)) != len(launches):
        p.error(f"--launches takes straight, jit or both (comma-separated), got {a.launches}")
    if a.profile_python and not a.profile:
        p.error("--profile-python goes with --profile: add --profile")
    if a.graph and (a.device or ("cuda" if torch.cuda.is_available() else "cpu")).split(":")[0] != "cuda":
        p.error("--graph replays CUDA graphs: run on a CUDA device, or leave --graph out")
    parsed = parse_plan(a.rotation, ("layer", "fused")) if a.rotation != "auto" else ("auto", None)
    if parsed is None or (parsed[1] is not None and a.intermediate % parsed[1]):
        p.error(f"--rotation takes auto, layer, fused or fused:B (B dividing --intermediate {a.intermediate}); "
                f"got {a.rotation}")
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and any(m in SETTINGS for m in methods) and os.environ.get("TRITON_INTERPRET") != "1":
        p.error("pvq rows off CUDA run Triton's interpreter: set TRITON_INTERPRET=1")
    say(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else device}, torch {torch.__version__}")
    with phase("importing pvq and its kernels"):
        import pvq.kernels  # noqa: F401  (registers the triton backend)
        from pvq.models.qlinear import set_backend
    if device.type == "cuda" and not a.skip_cuda_build:
        build_cuda_kernels()
    merged = device.type == "cuda"
    gen = torch.Generator(device=device).manual_seed(0)
    ids = {n: torch.randint(0, a.vocab, (1, n), device=device, generator=gen) for n in prompts}
    rows, coded, model = [], {}, None
    for method in methods:
        model = None
        model = fresh_llama(a, device)
        with phase(f"row {method}"):
            if method == "int4":
                try:
                    check_int4(device)
                except (RuntimeError, AttributeError, NotImplementedError) as e:
                    say(f"int4 row skipped: {type(e).__name__}: {str(e)[:200]}")
                    continue
                if merged:
                    merge(model)
                to_int4(model)
            elif method in SETTINGS:
                plan = resolve_plan(a.rotation, *SETTINGS[method][:2], a.intermediate)
                to_quantized(model, method, a.dim, plan, device, coded)
                if merged:
                    merge(model)
                set_backend(model, "triton")
            elif merged:
                merge(model)
            for launch in launches if method in SETTINGS else ("straight",):
                label = f"{method} ({plan})" if method in SETTINGS else method
                label += ", launches: jit" if launch == "jit" else ""
                with jit_launches(launch == "jit"):
                    for n in prompts:
                        ms, peak = time_prefill(model, ids[n], a.repeats)
                        rows.append({"method": label, "prompt": n, "ms": ms, "peak": peak})
                        say(f"{label}, {n} tokens: {ms:.2f} ms, peak {peak / 1e9:.2f} GB above the model")
                        if a.profile and device.type == "cuda":
                            rows[-1].update(profile_prefill(model, ids[n], python=a.profile_python))
                        if not (a.graph and device.type == "cuda"):
                            continue
                        for how, timed in (("CUDA graph", time_graph_prefill), ("decoder's graph", time_decoder_prefill)):
                            try:
                                ms = timed(model, ids[n], a.repeats)
                            except Exception as e:  # noqa: BLE001 - whatever the capture refuses: said, not timed
                                say(f"{label}, {n} tokens: no {how} ({type(e).__name__}: {str(e)[:200]})")
                                continue
                            rows.append({"method": f"{label}, {how}", "prompt": n, "ms": ms, "peak": 0,
                                         "base": f"fp16, {how}"})
                            say(f"{label}, {n} tokens, replayed from a {how}: {ms:.2f} ms")
        del model
        model = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\nPrefill, {a.layers} blocks (hidden {a.hidden}, MLP {a.intermediate}), batch 1, "
          f"{'merged q/k/v and gate/up, ' if merged else ''}median of {a.repeats}\n")
    print("| method | prompt | ms | x fp16 | peak GB above the model | kernels' GPU ms | GPU x fp16 | host ms to launch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = next((b for b in rows if b["method"] == r.get("base", "fp16") and b["prompt"] == r["prompt"]), None)
        ratio = f"{r['ms'] / base['ms']:.2f}" if base else "-"
        gpu = f"{r['gpu_ms']:.2f}" if "gpu_ms" in r else "-"
        gpu_ratio = f"{r['gpu_ms'] / base['gpu_ms']:.2f}" if base and "gpu_ms" in r and "gpu_ms" in base else "-"
        host = f"{r['host_ms']:.2f}" if "host_ms" in r else "-"
        print(f"| {r['method']} | {r['prompt']} | {r['ms']:.2f} | {ratio} | {r['peak'] / 1e9:.2f} | {gpu} | "
              f"{gpu_ratio} | {host} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
