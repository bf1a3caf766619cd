"""End to end on one GPU: tokens per second and GPU memory of a 7B-shaped Llama, fp16 against torch's
int4 kernel and pvq, every row through one harness (a static KV cache and a CUDA-graph decode step:
:mod:`pvq.eval.decoding`, what ``pvq generate --device cuda`` runs).

    python benchmarks/generate.py [--layers 32] [--methods fp16,int4,pvq4,pvq3,pvq2,e8-2] [--batch 1]
                                  [--new-tokens 64] [--rotation auto|layer|fused|fused:B|layer,fused]
                                  [--merge auto|no|yes|no,yes]
                                  [--compile no,yes] [--eager] [--profile]
                                  [--json FILE] [--dense-rotation-max-order N] [--mma-min-rows N]
    python benchmarks/generate.py --device cpu --layers 2 --hidden 256 --intermediate 768 --vocab 512
    python benchmarks/generate.py --checkpoint DIR [--backends dense,triton] [--compile no,yes]

A random-initialised Llama of LLaMA-2-7B's shapes (hidden 4096, MLP 11008, 32 heads, vocabulary
32000; ``--layers`` blocks; smaller with ``--hidden/--intermediate/--heads/--vocab``) generates
``--new-tokens`` tokens greedily after a 16-token prompt for ``--batch`` sequences, once per method:

* ``fp16``: the model as built;
* ``int4``: every block linear as torch's weight-only int4 kernel (``aten._weight_int4pack_mm``,
  tinygemm, group 128, asymmetric; the model in bf16, which that kernel takes; on CPU its
  dequantized reference);
* ``pvqB`` (B = 2, 3, 4 bits, D = ``--dim``, split index order) and ``e8-2``: every block linear a
  :class:`~pvq.models.QuantizedLinear` built by its ordinary constructor (codec config, stored
  tensors, rotation seeds: what a checkpoint's loader builds), run by the backend the device
  picks (``triton`` on CUDA). Its codes are real: one random Gaussian weight per distinct shape
  coded by the codec on the device, copied into every block (the kernels' speed does not
  depend on which points are stored; coding 224 layers would take minutes).

``--rotation auto`` (default): each method's plan as ``pvq quantize`` picks it for a Llama of this MLP width
(``fused:256`` for pvq3 and pvq4, ``layer`` for pvq2 and e8-2), so the rows are what a user's checkpoints run.
``--rotation layer``: every quantized linear rotates its input and output (two online randomized Hadamards).
``--rotation fused``: the plan that folds rotations into the model
(QuaRot-style): only down_proj keeps an online rotation of its input; the folding itself is
exact and costs nothing at run time, so random weights measure its speed (a LayerRotation with
its output side None), down_proj's rotation over its whole input (``pvq quantize --rotation-block 0``).
``--rotation fused:256``: ``fused`` with down_proj's rotation block-diagonal in chunks of 256 inputs (11008 = 43 x
256, no dense factor online): what ``pvq quantize --rotation fused`` writes by default since session 18 where 256
divides an input that is not a power of two. ``--rotation
layer,fused,fused:256``: a row per plan for each pvq method (the codes coded once).
``--merge auto`` (default): ``yes`` on CUDA, ``no`` elsewhere (``pvq generate --merge-projections``'s default).
(Until session 21 the defaults were ``--rotation layer --merge no``: add them to repeat an older command of the docs.)
``--merge no,yes``: each row also with every block's q/k/v and gate/up linears run as one product each
(:func:`pvq.models.merge_shared_input_linears`, ``pvq generate --merge-projections``; fp16 and int4 stacked
the same way, so all methods get the same fewer, larger products; pvq layers merge under ``fused`` only,
where q/k/v and gate/up share their input's rotation), and each MLP's gated activation handed to pvq's
down_proj (:func:`pvq.models.route_gated_mlps`; under ``fused:256`` one Triton kernel computes it with
down_proj's chunked rotation; fp16 and int4 keep their plain MLP). ``--compile no,yes``: each row also with the
decode step compiled by ``torch.compile`` (``pvq generate --compile``: inductor fuses what lies between the
products, each pvq product one operator; the same model measured again, its compilation in the setup
seconds). ``--profile``: after each row, one eager decode step's GPU time by kernel, and the online rotations'
(Hadamard kernels') share of it.

Per row: tokens per second (all sequences; decode steps only, the prefill apart), ratio to fp16,
peak GPU memory during generation, bytes of every tensor the model holds, bits per weight of the
block linears, the decoder's mode (``cuda-graph``, or why it fell back to eager steps) and setup
seconds (warm-up: kernel builds and compilation, graph capture). Every phase prints its time as it
ends (flushed). On CUDA the kernels' CUDA sources are compiled first, side by side in a phase of their own
(nvcc, about 100 s on a fresh H200 machine; cached after). ``--dense-rotation-max-order`` and
``--mma-min-rows`` are experiments: they move the package's thresholds for this process only;
``--rows-variant NAME:DEFINES`` (another experiment, benchmarks/_variants.py) measures each pvq row again with its
row products through leafrow8_gemv.cu built with those defines (rows labelled ``{NAME}``), and ``--inductor-option
KEY=VALUE`` passes options to inductor for every compiled row in place of the decoder's defaults (e.g.
``triton.enable_pdl=False``: the default on Hopper is True, its kernels and pvq's launched as programmatic dependent launches; session 31).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import time

import torch
from _plans import online_rotation_seeds, parse_plan, resolve_plan
from _variants import build_variant, parse_variant, variant_extension

T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", flush=True)


@contextlib.contextmanager
def phase(name: str):
    say(f"{name} ...")
    t = time.perf_counter()
    yield
    say(f"{name}: {time.perf_counter() - t:.1f} s")


# ---------------------------------------------------------------- models


def llama(a, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=a.hidden, intermediate_size=a.intermediate, num_hidden_layers=a.layers,
                      num_attention_heads=a.heads, num_key_value_heads=a.heads, vocab_size=a.vocab,
                      max_position_embeddings=4096)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.float16 if device.type == "cuda" else torch.float32).eval()
    return model


def fresh_llama(a, device):
    """A new random model of the run's shapes (seeded); the caller drops its old model first, so that it is freed
    before this one is built."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch.manual_seed(0)
    with phase(f"building a random Llama ({a.layers} blocks, hidden {a.hidden}, MLP {a.intermediate}) on {device.type}"):
        return llama(a, device)


def needs_fresh_model(model, method: str) -> bool:
    """Whether a row of ``method`` needs a new model: none yet, one with merged linears, or (fp16 and int4,
    which read the fp16 weights) one whose linears are not plain any more."""
    from pvq.models import has_merged_linears

    if model is None or has_merged_linears(model):
        return True
    return method in ("fp16", "int4") and not all(isinstance(m, torch.nn.Linear) for _, _, m, _ in block_linears(model))


def merge(model) -> int:
    """Each block's q/k/v and gate/up as one product each, where they can run as one (pvq's own merge);
    returns the number of merged products."""
    from pvq.models.merging import fuse_for_decoding, merged_products

    with phase("merging each block's q/k/v and gate/up linears; gated MLPs routed to down_proj"):
        say(fuse_for_decoding(model))
    return merged_products(model)


def block_linears(model):
    """(parent module, attribute, module, qualified name) of every linear inside the decoder blocks (plain,
    int4 or quantized)."""
    from pvq.models import QuantizedLinear

    out = []
    for i, block in enumerate(model.model.layers):
        for name, mod in list(block.named_modules()):
            if isinstance(mod, (torch.nn.Linear, Int4Linear, QuantizedLinear)):
                parent, _, attr = name.rpartition(".")
                out.append((block.get_submodule(parent) if parent else block, attr, mod, f"layers.{i}.{name}"))
    return out


class Int4Linear(torch.nn.Module):
    """Weight-only int4 (group 128, asymmetric, tinygemm's layout): ``aten._weight_int4pack_mm`` on CUDA
    (bf16 inputs), the dequantized weight on other devices (the reference it is checked against)."""

    GROUP = 128

    def __init__(self, w: torch.Tensor):
        super().__init__()
        out_f, in_f = w.shape
        self.in_features, self.out_features = in_f, out_f
        wg = w.float().reshape(out_f, in_f // self.GROUP, self.GROUP)
        lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
        scale = ((hi - lo) / 15).clamp(min=1e-6)
        q = ((wg - lo) / scale).round().clamp(0, 15).to(torch.int32).reshape(out_f, in_f)
        zero = lo + 8 * scale  # tinygemm: w = (q - 8) * scale + zero
        self.register_buffer("scales_zeros", torch.cat([scale, zero], -1).reshape(out_f, in_f // self.GROUP, 2)
                             .transpose(0, 1).contiguous().bfloat16())
        if w.is_cuda:
            packed = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
            self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack(packed, 8))
        else:
            self.register_buffer("packed", q.to(torch.uint8))

    def dequantized(self) -> torch.Tensor:
        """``[out, in]`` float32 of a CPU layer: ``(q - 8) * scale + zero``."""
        sz = self.scales_zeros.float().transpose(0, 1)  # [out, groups, 2]
        q = self.packed.float().reshape(self.out_features, -1, self.GROUP)
        return ((q - 8) * sz[..., :1] + sz[..., 1:]).reshape(self.out_features, self.in_features)

    def forward(self, x):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x.is_cuda:
            y = torch.ops.aten._weight_int4pack_mm(x2.bfloat16(), self.packed, self.GROUP, self.scales_zeros)
        else:
            y = x2.float() @ self.dequantized().T
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)


def to_int4(model) -> float:
    """Every block linear as :class:`Int4Linear` (the model turned bf16 on CUDA); bits per weight."""
    if next(model.parameters()).is_cuda:
        model.to(torch.bfloat16)
    stored = weights = 0
    for parent, attr, mod, _ in block_linears(model):
        q = Int4Linear(mod.weight.data)
        setattr(parent, attr, q)
        stored += 8 * (mod.weight.numel() // 2 + q.scales_zeros.numel() * q.scales_zeros.element_size())
        weights += mod.weight.numel()
        del mod
    return stored / weights


def check_int4(device) -> None:
    """The CUDA int4 kernel against its dequantized reference on one layer (catches a layout mistake)."""
    if device.type != "cuda":
        return
    w = torch.randn(256, 512, device=device) * 0.02
    lay = Int4Linear(w)
    x = torch.randn(3, 512, device=device, dtype=torch.bfloat16)
    ref = Int4Linear(w.cpu())
    want = x.float().cpu() @ ref.dequantized().T
    got = lay(x).float().cpu()
    err = float((got - want).norm() / want.norm())
    say(f"int4 kernel against its dequantized reference: relative error {err:.2e}")
    if err > 2e-2:
        raise SystemExit(f"the int4 kernel disagrees with its reference ({err:.2e}): layout mistake")


SETTINGS = {  # method: (codec, bits, vectors per scale, codec options)
    "pvq2": ("pvq", 2.0, 16, {}), "pvq3": ("pvq", 3.0, 16, {}), "pvq4": ("pvq", 4.0, 16, {}),
    "e8-2": ("e8", 2.0, 32, {}),
}


def coded_shapes(method: str, shapes, dim: int, device) -> dict:
    """One set of stored tensors per shape ``(out, in)``: a random Gaussian weight coded by the codec."""
    from pvq.codecs import make_codec, quantize_grouped

    name, bits, group, options = SETTINGS[method]
    codec = make_codec(name, bits, dim if name == "pvq" else 8, group_size=group, **options)
    out = {}
    for out_f, in_f in sorted(shapes):
        g = torch.Generator(device=device).manual_seed(out_f * 7 + in_f)
        parts: dict[str, list] = {}
        rows = max(8, (1 << 21) // in_f // 8 * 8)  # whole bytes of codes per chunk (8 vectors of any width)
        for r0 in range(0, out_f, rows):
            w = torch.randn(min(rows, out_f - r0), in_f, generator=g, device=device) * 0.02
            for k, t in quantize_grouped(codec, w.reshape(-1, codec.dim)).stored.tensors.items():
                parts.setdefault(k, []).append(t)
        out[(out_f, in_f)] = {k: torch.cat(v) for k, v in parts.items()}
    return codec, out


def to_quantized(model, method: str, dim: int, plan: str, device, coded: dict) -> float:
    """Every block linear as a QuantizedLinear of ``method`` (ordinary constructor) with the rotations of
    ``plan``; bits per weight. ``coded``: the coded weights per method, filled on first use."""
    from pvq.codecs import codec_to_config
    from pvq.models import QuantizedLinear
    from pvq.models.qlinear import buffer_name

    if device.type == "cuda":
        model.to(torch.float16)  # back from the int4 row's bf16 (before any codec tensor is installed)
    linears = block_linears(model)
    shapes = {(m.out_features, m.in_features) for _, _, m, _ in linears}
    if method not in coded:
        with phase(f"{method}: coding one random weight per shape {sorted(shapes)} on {device.type}"):
            coded[method] = coded_shapes(method, shapes, dim, device)
    codec, stored = coded[method]
    bits = weights = 0
    with phase(f"{method}: {len(linears)} QuantizedLinear layers ({codec.describe()}, rotation {plan})"):
        for i, (parent, attr, mod, name) in enumerate(linears):
            tensors = stored[(mod.out_features, mod.in_features)]
            q = QuantizedLinear(mod.in_features, mod.out_features, codec_to_config(codec),
                                {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()},
                                rotation=online_rotation_seeds(plan, name.endswith("down_proj"), 1000 * i),
                                device=device)
            for k, v in tensors.items():
                getattr(q, buffer_name(k)).copy_(v)
            setattr(parent, attr, q)
            bits += q.stored_bits()
            weights += q.in_features * q.out_features
            del mod
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return bits / weights


# ---------------------------------------------------------------- measuring


def build_cuda_kernels() -> None:
    """Compile the kernels' CUDA sources now, in a phase of their own (``torch.utils.cpp_extension``:
    nvcc, cached per machine), and say where a lock left by an interrupted build would make it wait."""
    import importlib
    import pkgutil

    import pvq.kernels as K
    from pvq.kernels.cuda_build import cuda_build_available

    if not cuda_build_available():
        say("no nvcc/ninja here: the CUDA kernels are skipped (Triton kernels run instead)")
        return
    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    for where, dirs, files in os.walk(root):
        if "lock" in files and os.path.basename(where).startswith("pvq_"):
            age = time.time() - os.path.getmtime(os.path.join(where, "lock"))
            say(f"WARNING: {where}/lock ({age / 60:.0f} min old): a build that was interrupted leaves it, and the "
                "next build waits on it for ever; remove it if no other build runs")
    builds = []
    for info in pkgutil.iter_modules(K.__path__):
        if not info.name.startswith("cuda_") or info.name == "cuda_build":
            continue
        build = getattr(importlib.import_module(f"pvq.kernels.{info.name}"), "_extension", None)
        if build is not None:
            builds.append((info.name, build))
        rows_build = getattr(importlib.import_module(f"pvq.kernels.{info.name}"), "_rows_extension", None)
        if rows_build is not None:
            builds.append((f"{info.name} (rows)", rows_build))
    from concurrent.futures import ThreadPoolExecutor

    with phase(f"compiling the CUDA kernels of {', '.join(n for n, _ in builds)} side by side (nvcc on first use; "
               "cached after)"):
        with ThreadPoolExecutor(len(builds)) as pool:
            built = list(pool.map(lambda b: b[1]() is not None, builds))
    for (name, _), ok in zip(builds, built):
        if not ok:
            say(f"pvq.kernels.{name}: build failed (see the warning); its layers run the Triton kernels")


def parse_inductor_options(specs: list[str]) -> dict | None:
    """``["KEY=VALUE", ...]`` -> ``{KEY: VALUE}`` (VALUE a Python literal, else the string) for torch.compile's
    ``options``, in place of the decoder's defaults; none named: None (the defaults,
    :func:`pvq.eval.decoding.default_compile_options`). Raises ValueError saying what to write."""
    import ast

    options = {}
    for spec in specs:
        key, eq, value = spec.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ValueError(f"--inductor-option takes KEY=VALUE (e.g. triton.enable_pdl=False); got {spec!r}")
        try:
            options[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = value.strip()
    return options or None


def measure(model, a, device, compiled: bool = False) -> dict:
    from pvq.eval.decoding import StaticDecoder, decode
    from pvq.eval.runs import model_memory_bytes
    from pvq.models import keep_stored_on_host

    # as pvq's loader does: once a layer's runtime layout is on the GPU, the stored codes it does not
    # read move to host memory
    keep_stored_on_host(model)
    prompt = 16
    ids = torch.randint(0, model.config.vocab_size, (a.batch, prompt), device=device,
                        generator=torch.Generator(device=device).manual_seed(0))
    dec = StaticDecoder(model, a.batch, prompt + a.new_tokens + 8, compile=compiled,
                        compile_options=a.compile_options)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    wanted = ("cuda-graph" if dec.want_graph else "static") + (", compiled" if compiled else "")
    with phase(f"{'compilation, ' if compiled else ''}warm-up and capture (mode wanted: {wanted})"):
        dec.capture(ids)
    run = decode(dec, ids, a.new_tokens)
    say(f"decoded {a.batch} x {run.tokens.shape[1]} tokens in {run.seconds:.2f} s ({run.mode})")
    r = {"tokens_per_s": run.tokens_per_second, "mode": run.mode, "setup_s": dec.setup_seconds,
         "prefill_s": run.prefill_seconds, "model_bytes": model_memory_bytes(model, device),
         "peak_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
         "first_tokens": run.tokens[0, :8].tolist()}
    if a.eager:
        eager = decode(StaticDecoder(model, a.batch, prompt + a.new_tokens + 8, graph=False, compile=compiled,
                                     compile_options=a.compile_options), ids, a.new_tokens)
        r["eager_tokens_per_s"] = eager.tokens_per_second
        say(f"eager steps over the static cache: {eager.tokens_per_second:.1f} tokens/s")
    if a.profile:
        r["profile"] = profile_step(model, a.batch, device, compiled=compiled)
    del dec
    if compiled:  # Dynamo's caches can keep the compiled model alive into the next row (its peak memory)
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return r


def kernel_times(prof) -> list[tuple[float, int, str]]:
    """``(GPU microseconds, calls, kernel name)`` of every kernel a ``torch.profiler`` run saw, largest first."""
    rows = []
    for ev in prof.key_averages():
        us = getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", 0)
        if us > 0:
            rows.append((us, ev.count, ev.key[:90]))
    return sorted(rows, reverse=True)


def profile_step(model, batch: int, device, steps: int = 3, top: int = 10, compiled: bool = False) -> list[dict]:
    """GPU microseconds per decode step without a graph (compiled where ``compiled``) by kernel name (largest
    first), from ``torch.profiler``."""
    from torch.profiler import ProfilerActivity, profile

    from pvq.eval.decoding import StaticDecoder

    dec = StaticDecoder(model, batch, 32, graph=False, compile=compiled)
    prompt = torch.zeros(batch, 8, dtype=torch.long, device=device)
    dec.capture(prompt)  # the compilation, where compiled
    tok = dec.prefill(prompt).argmax(-1)
    dec.step(tok)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            tok = dec.step(tok).argmax(-1)
        torch.cuda.synchronize()
    rows = [{"kernel": name, "us_per_step": us / steps, "calls_per_step": count / steps}
            for us, count, name in kernel_times(prof)]
    total = sum(r["us_per_step"] for r in rows)
    rot = sum(r["us_per_step"] for r in rows if "hadamard" in r["kernel"].lower())
    say(f"GPU time per {'compiled' if compiled else 'eager'} decode step ({dec.mode}): {total:.0f} us (kernels: "
        f"{len(rows)}), of it online rotations "
        f"(Hadamard kernels): {rot:.0f} us")
    for r in rows[:top]:
        print(f"#   {r['us_per_step']:8.1f} us  {100 * r['us_per_step'] / total:5.1f}%  x{r['calls_per_step']:.0f}  "
              f"{r['kernel']}", flush=True)
    return [{"total_us": total, "rotation_us": rot}] + rows[:top]


def table(rows: list[dict], title: str) -> None:
    """The rows as markdown; ratios against the fp16 row (else the first row, named in the header)."""
    base = next((r for r in rows if r["method"] == "fp16"), rows[0])
    ref = "fp16" if base["method"] == "fp16" else base["method"]
    print(f"\n{title}\n")
    print(f"| method | bits/weight (blocks) | tokens/s | x {ref} | peak GPU memory GB | model tensors GB | "
          f"x {ref} memory | mode | setup s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        peak = f"{r['peak_bytes'] / 1e9:.2f}" if r.get("peak_bytes") else "-"
        mem = r["model_bytes"] / base["model_bytes"]
        print(f"| {r['method']} | {r['bits']:.3f} | {r['tokens_per_s']:.1f} | {r['tokens_per_s'] / base['tokens_per_s']:.2f} "
              f"| {peak} | {r['model_bytes'] / 1e9:.2f} | {mem:.2f} | {r['mode'][:60]} | {r['setup_s']:.1f} |")
    sys.stdout.flush()


# ---------------------------------------------------------------- entry points


def main_checkpoint(a, device, compiles: list[bool]) -> None:
    """Tokens/s of a real checkpoint through each backend (``--checkpoint``), uncompiled and/or compiled."""
    from pvq.models import load_quantized
    from pvq.models.qlinear import set_backend

    with phase(f"loading {a.checkpoint}"):
        model = load_quantized(a.checkpoint, device=str(device), dtype=torch.float16).eval()
    from pvq.models import QuantizedLinear

    qs = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    bits = sum(q.stored_bits() for q in qs) / max(1, sum(q.in_features * q.out_features for q in qs))
    rows = []
    for name in a.backends.split(","):
        set_backend(model, name)
        for compiled in compiles:
            label = name + (" compiled" if compiled else "")
            with phase(f"backend {label}"):
                r = measure(model, a, device, compiled)
            rows.append({"method": label, "bits": bits, **r})
    table(rows, f"{a.checkpoint}, {a.new_tokens} new tokens, batch {a.batch}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"checkpoint": a.checkpoint, "rows": rows}, f, indent=1)


def add_shape_arguments(p: argparse.ArgumentParser) -> None:
    """The random Llama's shapes (LLaMA-2-7B's by default): ``--layers --hidden --intermediate --heads --vocab``."""
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=11008)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--vocab", type=int, default=32000)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_arguments(p)
    p.add_argument("--methods", default="fp16,int4,pvq4,pvq3,pvq2,e8-2",
                   help=f"any of fp16 (first where named: the rows replace the model's linears in turn), int4, "
                        f"{', '.join(SETTINGS)}; ratios are against fp16, else the first row")
    p.add_argument("--bits", default=None, help="shorthand: pvq rows at these bits, e.g. 3,2 (fp16 and int4 kept)")
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--rotation", default="auto", help="online rotations of the quantized layers: auto (each method's "
                   "plan as pvq quantize picks it: fused:256 for pvq from 3 bits, layer for pvq2 and e8), layer, fused "
                   "(down_proj's over its whole input), fused:B (in chunks of B inputs), or several (layer,fused: a "
                   "row per plan and method)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--batch", type=int, default=1, help="sequences generated together")
    p.add_argument("--merge", default="auto", help="auto (yes on CUDA, no elsewhere: pvq generate's default), no, yes "
                   "or no,yes: run each block's q/k/v and gate/up linears as one product each (every method: fp16 and "
                   "int4 stacked, pvq's merged codes; pvq generate --merge-projections), a row per setting")
    p.add_argument("--compile", default="no", help="no, yes or no,yes: the decode step compiled by torch.compile "
                   "(pvq generate --compile; every method), a row per setting")
    p.add_argument("--eager", action="store_true", help="also time eager steps over the static cache")
    p.add_argument("--profile", action="store_true", help="GPU time of one eager decode step by kernel, per row")
    p.add_argument("--device", default=None, help="default: cuda where available")
    p.add_argument("--json", default=None)
    p.add_argument("--checkpoint", default=None, help="a pvq checkpoint to measure instead of the 7B shapes")
    p.add_argument("--backends", default="dense,triton", help="with --checkpoint: backends to compare")
    p.add_argument("--pvq-backends", default="auto",
                   help="backends of the pvq rows, a row per backend: auto (the device's choice), or names such as "
                        "triton,triton-rows (the quad order for several rows: docs/kernels.md, session 29)")
    p.add_argument("--rows-variant", action="append", default=[], metavar="NAME:DEFINE[+DEFINE]",
                   help="an experiment: each pvq row again with its row products through leafrow8_gemv.cu built with "
                        "these defines (benchmarks/_variants.py; rows labelled {NAME}), e.g. x:SOME_MACRO=1")
    p.add_argument("--inductor-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of torch.compile's inductor for every compiled row (VALUE a Python literal); "
                        "named options replace the decoder's defaults (on Hopper triton.enable_pdl=True), e.g. "
                        "triton.enable_pdl=False")
    p.add_argument("--dense-rotation-max-order", type=int, default=None,
                   help="an experiment: the CUDA rotation kernel preferred for dense factors up to this order "
                        "(default: the package's DENSE_PREFERRED_MAX_ORDER; 344 puts 11008 on it)")
    p.add_argument("--mma-min-rows", type=int, default=None,
                   help="an experiment: input rows from which the row layout multiplies on tensor cores (default: "
                        "the package's MMA_MIN_ROWS)")
    a = p.parse_args()
    methods = a.methods.split(",") if a.bits is None else ["fp16", "int4"] + [f"pvq{b}" for b in a.bits.split(",")]
    bad = [m for m in methods if m not in ("fp16", "int4", *SETTINGS)]
    if bad or not methods or "fp16" in methods[1:]:
        p.error(f"--methods: any of fp16 (first, where named), int4, {', '.join(SETTINGS)}; got {a.methods}")
    plans = a.rotation.split(",")
    def plan_ok(pl: str) -> bool:
        if pl == "auto":
            return True
        parsed = parse_plan(pl, ("layer", "fused"))
        return parsed is not None and (parsed[1] is None or a.intermediate % parsed[1] == 0)

    if not all(map(plan_ok, plans)):
        p.error(f"--rotation takes auto, layer, fused or fused:B (B dividing --intermediate {a.intermediate}), comma "
                f"separated; got {a.rotation}")
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    merges = [{"no": False, "yes": True, "auto": device.type == "cuda"}.get(g) for g in a.merge.split(",")]
    if None in merges:
        p.error(f"--merge takes auto, no, yes or no,yes; got {a.merge}")
    compiles = [{"no": False, "yes": True}.get(g) for g in a.compile.split(",")]
    if None in compiles:
        p.error(f"--compile takes no, yes or no,yes; got {a.compile}")
    if a.profile and device.type != "cuda":
        p.error("--profile needs CUDA")
    try:  # before any model is built: a malformed experiment exits 2 with what to write
        a.compile_options = parse_inductor_options(a.inductor_option)
        for spec in a.rows_variant:
            parse_variant(spec)
    except ValueError as e:
        p.error(str(e))
    say(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else device}, torch {torch.__version__}")
    with phase("importing pvq and its kernels"):
        import pvq.kernels  # noqa: F401  (registers the triton backend)
    from pvq.models.backends import BACKENDS
    from pvq.models.qlinear import set_backend

    unknown = [b for b in a.pvq_backends.split(",") if b != "auto" and b not in BACKENDS]
    if unknown:
        p.error(f"--pvq-backends takes auto or registered backends ({', '.join(sorted(BACKENDS))}); got {unknown}")
    if device.type == "cuda":
        build_cuda_kernels()
    if a.dense_rotation_max_order is not None:  # this process only: the threshold the backend's choice reads
        from pvq.kernels import cuda_hadamard

        cuda_hadamard.DENSE_PREFERRED_MAX_ORDER = a.dense_rotation_max_order
        say(f"the CUDA rotation kernel preferred for dense factors up to order {a.dense_rotation_max_order}")
    if a.mma_min_rows is not None:  # this process only
        from pvq.kernels import cuda_leaf

        cuda_leaf.MMA_MIN_ROWS = a.mma_min_rows
        say(f"tensor cores from {a.mma_min_rows} input rows")
    variants = {"": None}  # the package's build, then each experiment's (a failed build warns and is left out)
    for spec in a.rows_variant:
        with phase(f"building the experiment {spec}"):
            name, ext = build_variant(spec)
        if ext is not None:
            variants[name] = ext
    if a.checkpoint:
        return main_checkpoint(a, device, compiles)
    rows = []
    model = None
    coded: dict = {}
    for method, plan, merged in [(m, p, g) for m in methods
                                 for p in (dict.fromkeys(resolve_plan(pl, *SETTINGS[m][:2], a.intermediate)
                                                         for pl in plans)
                                           if m in SETTINGS else ("",))
                                 for g in merges]:
        label = (f"{method} ({plan})" if plan else method) + (" merged" if merged else "")
        products = 0
        with phase(f"row {label}"):
            if needs_fresh_model(model, method):
                model = None  # freed before the next is built: the rows' peak memory is their own
                model = fresh_llama(a, device)
            if method == "fp16":  # float32 off CUDA (CPU smoke runs)
                bits = 16.0 if device.type == "cuda" else 32.0
                if merged:
                    products = merge(model)
            elif method == "int4":
                try:
                    check_int4(device)
                except (RuntimeError, AttributeError, NotImplementedError) as e:  # a torch without the kernel
                    say(f"int4 row skipped: {type(e).__name__}: {str(e)[:200]}")
                    continue
                if merged:  # the stacked fp16 weights packed as one int4 layer each
                    products = merge(model)
                with phase("int4: packing every block linear"):
                    bits = to_int4(model)
            else:
                bits = to_quantized(model, method, a.dim, plan, device, coded)
                if merged:
                    products = merge(model)
            base = len(rows)  # this model's first row: compared with the unmerged one, the uncompiled one
            for backend, variant, compiled in [
                    (b, v, c) for b in (a.pvq_backends.split(",") if method in SETTINGS else ["auto"])
                    for v in (variants if method in SETTINGS else [""]) for c in compiles]:
                if method in SETTINGS:
                    set_backend(model, None if backend == "auto" else backend)
                with variant_extension(variants[variant]) if variant else contextlib.nullcontext():
                    r = measure(model, a, device, compiled)
                r["merged_products"] = products
                if merged and not compiled and merges[0] is False:  # its unmerged row ran just before, same weights
                    same = rows[base - len(compiles)]["first_tokens"] == r["first_tokens"]
                    say(f"{products} merged products; first tokens {'equal to' if same else 'NOT equal to'} the "
                        f"unmerged row's")
                if not compiled and len(rows) > base and rows[base]["method"].startswith(label):  # another backend
                    same = rows[base]["first_tokens"] == r["first_tokens"]
                    say(f"[{backend}]{'{' + variant + '}' if variant else ''} first tokens "
                        f"{'equal to' if same else 'NOT equal to'} the first backend's row's")
                if compiled and len(rows) > base:
                    same = rows[base]["first_tokens"] == r["first_tokens"]
                    say(f"first tokens {'equal to' if same else 'NOT equal to (float rounding may differ)'} the "
                        f"uncompiled row's")
                rows.append({"method": label + ("" if backend == "auto" else f" [{backend}]") +
                             (f" {{{variant}}}" if variant else "") + (" compiled" if compiled else ""), "bits": bits,
                             **r})
                print({k: v for k, v in rows[-1].items() if k != "profile"}, flush=True)
                if a.json:
                    with open(a.json, "w") as f:
                        json.dump({"device": str(device), "layers": a.layers, "batch": a.batch, "rows": rows}, f,
                                  indent=1)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    table(rows, f"{name}, {a.layers} blocks, {a.new_tokens} new tokens, batch {a.batch}, static cache + "
                f"{'CUDA graph' if device.type == 'cuda' else 'eager steps'}")
    say("done")


if __name__ == "__main__":
    main()
