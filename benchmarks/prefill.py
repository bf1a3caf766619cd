"""Prefill of a 7B-shaped Llama on one GPU: fp16, torch's int4 kernel and pvq, pvq with and without its
whole-layer decodes ``--depths`` layers ahead on a side stream (:mod:`pvq.kernels.decode_ahead`; docs/kernels.md,
session 25).

    python benchmarks/prefill.py [--layers 32] [--methods fp16,int4,pvq3,pvq2] [--prompts 512,2048] [--depths 1,2]
    TRITON_INTERPRET=1 python benchmarks/prefill.py --device cpu --layers 2 --hidden 256 --intermediate 768 \
        --vocab 512 --prompts 24 --methods fp16,pvq3 --repeats 1 --depths 1

The models are :mod:`benchmarks.generate`'s (same shapes, same random codes, each method's rotation plan as
``pvq quantize`` picks it, q/k/v and gate/up merged on CUDA as ``pvq generate`` runs them). A prefill is one
forward of ``[1, P]`` prompt ids without a cache, the logits of the last position only; per row its milliseconds
(CUDA events, median of ``--repeats`` after two warm-up passes: the first teaches decode-ahead the layers' order),
ratio to fp16, peak GPU memory above the model's, and for decode-ahead (a row per depth) the early decodes taken /
wrong / launched and whether its last-position logits equal the plain pvq row's bit for bit (they must: the same
kernels). Above 16 rows pvq decodes every layer to fp16 (Triton) and multiplies by cuBLAS; issue 22 asks for
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

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from generate import (SETTINGS, add_shape_arguments, build_cuda_kernels, check_int4, fresh_llama,  # noqa: E402
                      merge, phase, resolve_plan, say, to_int4, to_quantized)


def last_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """The last position's logits ``[B, V]`` of one forward without a cache."""
    try:
        out = model(input_ids=ids, use_cache=False, logits_to_keep=1)
    except TypeError:  # a transformers without logits_to_keep
        out = model(input_ids=ids, use_cache=False)
    return out.logits[:, -1]


def time_prefill(model, ids: torch.Tensor, repeats: int) -> tuple[float, int, torch.Tensor]:
    """(median milliseconds, peak bytes allocated above the start, last logits) of ``repeats`` prefills."""
    cuda = ids.is_cuda
    with torch.no_grad():
        for _ in range(2):
            logits = last_logits(model, ids)
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                logits = last_logits(model, ids)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t = time.perf_counter()
                logits = last_logits(model, ids)
                times.append((time.perf_counter() - t) * 1e3)
    peak = torch.cuda.max_memory_allocated() - base if cuda else 0
    return statistics.median(times), peak, logits.float()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_arguments(p)
    p.add_argument("--methods", default="fp16,int4,pvq3,pvq2", help=f"fp16 (first), int4, {', '.join(SETTINGS)}")
    p.add_argument("--prompts", default="512,2048", help="prompt lengths (rows of every product)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--depths", default="1,2", help="layers decoded ahead, a pvq row per depth")
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--device", default=None, help="default: cuda where available")
    a = p.parse_args()
    methods = a.methods.split(",")
    if any(m not in ("fp16", "int4", *SETTINGS) for m in methods) or "fp16" in methods[1:]:
        p.error(f"--methods: fp16 (first, where named), int4, {', '.join(SETTINGS)}; got {a.methods}")
    try:
        prompts = [int(t) for t in a.prompts.split(",")]
        depths = [int(t) for t in a.depths.split(",") if t]
    except ValueError:
        p.error(f"--prompts and --depths take comma-separated numbers, got {a.prompts} and {a.depths}")
    if any(d < 1 for d in depths):
        p.error(f"--depths: positive numbers of layers, got {a.depths}")
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and any(m in SETTINGS for m in methods) and os.environ.get("TRITON_INTERPRET") != "1":
        p.error("pvq rows off CUDA run Triton's interpreter: set TRITON_INTERPRET=1")
    say(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else device}, torch {torch.__version__}")
    with phase("importing pvq and its kernels"):
        import pvq.kernels  # noqa: F401  (registers the triton backend)
        from pvq.kernels.decode_ahead import enable_decode_ahead
        from pvq.models.qlinear import set_backend
    if device.type == "cuda":
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
                plan = resolve_plan("auto", *SETTINGS[method][:2], a.intermediate)
                to_quantized(model, method, a.dim, plan, device, coded)
                if merged:
                    merge(model)
                set_backend(model, "triton")
            elif merged:
                merge(model)
            for n in prompts:
                ms, peak, logits = time_prefill(model, ids[n], a.repeats)
                rows.append({"method": method, "prompt": n, "ms": ms, "peak": peak})
                say(f"{method}, {n} tokens: {ms:.2f} ms, peak {peak / 1e9:.2f} GB above the model")
                for depth in depths if method in SETTINGS else ():
                    ahead = enable_decode_ahead(model, depth)
                    ms, peak, got = time_prefill(model, ids[n], a.repeats)
                    same = torch.equal(got, logits)
                    label = f"{method} decode-ahead {depth}"
                    rows.append({"method": label, "prompt": n, "ms": ms, "peak": peak,
                                 "ahead": f"{ahead.hits}/{ahead.misses}/{ahead.launched}", "same": same})
                    say(f"{label}, {n} tokens: {ms:.2f} ms, peak {peak / 1e9:.2f} GB; early decodes taken/wrong/"
                        f"launched {ahead.hits}/{ahead.misses}/{ahead.launched}; logits "
                        f"{'equal to' if same else 'NOT equal to'} the plain row's")
                    ahead.remove()
        del model
        model = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\nPrefill, {a.layers} blocks (hidden {a.hidden}, MLP {a.intermediate}), batch 1, "
          f"{'merged q/k/v and gate/up, ' if merged else ''}median of {a.repeats}\n")
    print("| method | prompt | ms | x fp16 | peak GB above the model | early decodes taken/wrong/launched | "
          "logits = plain |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        base = next((b["ms"] for b in rows if b["method"] == "fp16" and b["prompt"] == r["prompt"]), None)
        ratio = f"{r['ms'] / base:.2f}" if base else "-"
        print(f"| {r['method']} | {r['prompt']} | {r['ms']:.2f} | {ratio} | {r['peak'] / 1e9:.2f} | "
              f"{r.get('ahead', '-')} | {'-' if 'same' not in r else 'yes' if r['same'] else 'NO'} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
