"""End to end on one GPU: generation speed (batch 1, or ``--batch`` sequences) and GPU memory of a
7B-shaped Llama, fp16 against pvq.

    python benchmarks/generate.py [--layers 32] [--bits 2,3,4] [--dim 8] [--new-tokens 64] [--batch 1] [--json FILE]
    python benchmarks/generate.py --checkpoint DIR [--backends dense,triton] [--new-tokens 64]

A random-initialised Llama of LLaMA-2-7B's shapes (hidden 4096, MLP 11008, 32
heads, vocabulary 32000; ``--layers`` blocks) in fp16 generates ``--new-tokens``
tokens greedily after a 16-token prompt (``model.generate``, eager PyTorch;
one warm-up generation first), and again with one decode step captured in a
CUDA graph over a static KV cache (replays: launch gaps and host work gone). Then every
linear layer of the blocks is replaced by a pvq ``QuantizedLinear`` holding
random valid codes (uniform shape indices and gains; the speed of the kernels
does not depend on which points are stored) at each ``--bits`` with vectors of
``--dim`` (split index order), run by the ``triton`` backend, and the same is
measured. Per row: tokens per second (generated tokens of all ``--batch`` sequences), the ratio to fp16, GPU memory
(``torch.cuda.max_memory_allocated`` during generation, and the bytes of every
tensor the model holds after it), and the layer bits per weight.

``--profile``: after each row, the GPU time of one eager decode step by kernel
(``torch.profiler``), the ten largest: where a token's time goes.

``--checkpoint DIR``: a real pvq checkpoint (e.g. the reference model quantized by
``pvq quantize``) instead of the random 7B shapes, measured the same way through each
of ``--backends`` (fp16 row: the same checkpoint through the dense backend's cache is
not fp16 weights, so the ratio is against the first backend named).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pvq.codecs import make_codec, codec_to_config
from pvq.codecs.packing import pack_bits
from pvq.eval.runs import model_memory_bytes
from pvq.models import QuantizedLinear
from pvq.models.qlinear import buffer_name


def llama_7b(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).half().eval()
    return model


def random_quantized(lin_in: int, lin_out: int, bits: float, dim: int, seed: int) -> QuantizedLinear:
    """A QuantizedLinear ``[out, in]`` on the GPU with random valid split-order PVQ codes."""
    codec = make_codec("pvq", bits, dim, group_size=16)
    n = lin_out * lin_in // dim
    g = torch.Generator(device="cuda").manual_seed(seed)
    index = torch.randint(0, codec.num_shapes, (n,), generator=g, device="cuda", dtype=torch.int64)
    gain = torch.randint(0, codec.gain.num_levels, (n,), generator=g, device="cuda", dtype=torch.int64)
    codes = pack_bits(index * codec.gain.num_levels + gain, codec.code_bits)
    scales = (0.02 * (dim * codec.group_size) ** 0.5 * (1 + 0.1 * torch.rand(n // codec.group_size, generator=g,
                                                                             device="cuda"))).half()
    stored = {"codes": codes, "scale": scales}
    q = QuantizedLinear(lin_in, lin_out, codec_to_config(codec), {k: (tuple(v.shape), v.dtype) for k, v in stored.items()},
                        rotation={"out_seed": seed, "in_seed": seed + 1}, device="cuda")
    for k, v in stored.items():
        getattr(q, buffer_name(k)).copy_(v)
    return q


def quantize_blocks(model, bits: float, dim: int) -> float:
    """Replace every block linear (or the previous QuantizedLinear) by a random-code one; bits per weight."""
    stored = weights = 0
    for i, block in enumerate(model.model.layers):
        for name, mod in list(block.named_modules()):
            if isinstance(mod, (torch.nn.Linear, QuantizedLinear)):
                parent = block.get_submodule(name.rsplit(".", 1)[0]) if "." in name else block
                q = random_quantized(mod.in_features, mod.out_features, bits, dim, seed=1000 * i + len(name))
                setattr(parent, name.rsplit(".", 1)[-1], q)
                del mod
                stored += q.stored_bits()
                weights += q.in_features * q.out_features
        torch.cuda.empty_cache()
    return stored / weights


def measure(model, new_tokens: int, batch: int = 1) -> dict:
    ids = torch.randint(0, model.config.vocab_size, (batch, 16), device="cuda")
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    with torch.no_grad():
        model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)  # warm-up (kernel compilation)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        model.generate(ids, **kw)
        torch.cuda.synchronize()
        s = time.perf_counter() - t0
    return {"tokens_per_s": batch * new_tokens / s, "peak_bytes": torch.cuda.max_memory_allocated(),
            "model_bytes": model_memory_bytes(model)}


def measure_graph(model, new_tokens: int, batch: int = 1) -> float | None:
    """Tokens per second (all sequences) of greedy decoding of ``batch`` sequences with one decode step
    captured in a CUDA graph
    (static KV cache; host work and launch gaps out of the way); None if the capture fails."""
    try:
        from transformers import StaticCache

        prompt = 16
        cache = StaticCache(config=model.config, max_cache_len=prompt + new_tokens + 8)
        ids = torch.randint(0, model.config.vocab_size, (batch, prompt), device="cuda")
        with torch.no_grad():
            out = model(input_ids=ids, past_key_values=cache, use_cache=True,
                        cache_position=torch.arange(prompt, device="cuda"))
            tok = out.logits[:, -1:].argmax(-1)
            pos = torch.tensor([prompt], device="cuda")
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    model(input_ids=tok, past_key_values=cache, cache_position=pos, use_cache=True)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                logits = model(input_ids=tok, past_key_values=cache, cache_position=pos, use_cache=True).logits
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(new_tokens):
                graph.replay()
                tok.copy_(logits[:, -1:].argmax(-1))
                pos += 1
            torch.cuda.synchronize()
            return batch * new_tokens / (time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - report and go on with the eager numbers
        print(f"# CUDA graph capture failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
        return None


def profile_step(model, steps: int = 3, top: int = 10) -> list[dict]:
    """GPU microseconds per eager decode step by kernel name (largest first), from ``torch.profiler``."""
    from torch.profiler import ProfilerActivity, profile

    ids = torch.randint(0, model.config.vocab_size, (1, 16), device="cuda")
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        cache, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        model(input_ids=tok, past_key_values=cache, use_cache=True)  # warm-up of the decode shapes
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                tok = model(input_ids=tok, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
    rows = []
    for ev in prof.key_averages():
        us = getattr(ev, "self_device_time_total", None)
        if us is None:
            us = getattr(ev, "self_cuda_time_total", 0)
        if us > 0:
            rows.append({"kernel": ev.key[:90], "us_per_step": us / steps, "calls_per_step": ev.count / steps})
    rows.sort(key=lambda r: -r["us_per_step"])
    total = sum(r["us_per_step"] for r in rows)
    print(f"# GPU time per decode step: {total:.0f} us (kernels: {len(rows)})")
    for r in rows[:top]:
        print(f"#   {r['us_per_step']:8.1f} us  {100 * r['us_per_step'] / total:5.1f}%  x{r['calls_per_step']:.0f}  "
              f"{r['kernel']}")
    return [{"total_us": total}] + rows[:top]


def main_checkpoint(a) -> None:
    """Tokens/s of a real checkpoint through each backend (``--checkpoint``)."""
    from pvq.models import load_quantized
    from pvq.models.qlinear import set_backend

    model = load_quantized(a.checkpoint, device="cuda", dtype=torch.float16).eval()
    rows = []
    for name in a.backends.split(","):
        set_backend(model, name)
        r = measure(model, a.new_tokens, a.batch)
        if a.profile:  # before the graph: a failed capture leaves the CUDA generator unusable
            r["profile"] = profile_step(model)
        r["graph_tokens_per_s"] = measure_graph(model, a.new_tokens, a.batch)
        rows.append({"backend": name, **r})
        print({k: v for k, v in rows[-1].items() if k != "profile"}, flush=True)
    print(f"\n{torch.cuda.get_device_name()}, {a.checkpoint}, {a.new_tokens} new tokens, batch {a.batch}\n")
    print("| backend | tokens/s eager | tokens/s CUDA graph | peak GPU memory MB | model tensors MB |")
    print("|---|---|---|---|---|")
    for r in rows:
        g = r["graph_tokens_per_s"]
        print(f"| {r['backend']} | {r['tokens_per_s']:.1f} | {f'{g:.1f}' if g else '-'} | "
              f"{r['peak_bytes'] / 1e6:.1f} | {r['model_bytes'] / 1e6:.1f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "checkpoint": a.checkpoint, "rows": rows}, f, indent=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--bits", default="4,3,2")
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--batch", type=int, default=1, help="sequences generated together")
    p.add_argument("--json", default=None)
    p.add_argument("--profile", action="store_true", help="GPU time of one decode step by kernel, per row")
    p.add_argument("--checkpoint", default=None, help="a pvq checkpoint to measure instead of the 7B shapes")
    p.add_argument("--backends", default="dense,triton", help="with --checkpoint: backends to compare")
    a = p.parse_args()
    import pvq.kernels  # noqa: F401  (the triton backend)

    if a.checkpoint:
        return main_checkpoint(a)

    rows = []
    model = llama_7b(a.layers)
    base = measure(model, a.new_tokens, a.batch)
    base["graph_tokens_per_s"] = measure_graph(model, a.new_tokens, a.batch)
    if a.profile:
        base["profile"] = profile_step(model)
    rows.append({"method": "fp16", "bits": 16.0, **base, "x_fp16": 1.0, "memory_frac": 1.0})
    print({k: v for k, v in rows[-1].items() if k != "profile"}, flush=True)
    for bits in (float(b) for b in a.bits.split(",")):
        bpw = quantize_blocks(model, bits, a.dim)
        r = measure(model, a.new_tokens, a.batch)
        r["graph_tokens_per_s"] = measure_graph(model, a.new_tokens, a.batch)
        if a.profile:
            r["profile"] = profile_step(model)
        rows.append({"method": f"pvq D={a.dim}", "bits": bpw, **r, "x_fp16": r["tokens_per_s"] / base["tokens_per_s"],
                     "memory_frac": r["peak_bytes"] / base["peak_bytes"]})
        print({k: v for k, v in rows[-1].items() if k != "profile"}, flush=True)
    print(f"\n{torch.cuda.get_device_name()}, {a.layers} blocks, {a.new_tokens} new tokens, batch {a.batch}, eager\n")
    print("| method | bits/weight (blocks) | tokens/s eager | x fp16 | tokens/s CUDA graph | x fp16 | "
          "peak GPU memory GB | model tensors GB | x fp16 memory |")
    print("|---|---|---|---|---|---|---|---|---|")
    g0 = rows[0]["graph_tokens_per_s"]
    for r in rows:
        g = r["graph_tokens_per_s"]
        graph = f"{g:.1f} | {g / g0:.2f}" if g and g0 else "- | -"
        print(f"| {r['method']} | {r['bits']:.3f} | {r['tokens_per_s']:.1f} | {r['x_fp16']:.2f} | {graph} | "
              f"{r['peak_bytes'] / 1e9:.2f} | {r['model_bytes'] / 1e9:.2f} | {r['memory_frac']:.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "layers": a.layers, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
