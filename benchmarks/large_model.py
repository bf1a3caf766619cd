"""Time and peak memory to quantize a 7B- or 70B-shaped Llama streamed from safetensors shards.

Writes a random-weight Llama (bf16, one shard per decoder block plus the embeddings, norm and LM head)
of the chosen shape and block count, then quantizes it once per method, each in its own process (so
its peak memory is its own), through the streamed path of ``pvq quantize --stream``
(:func:`pvq.models.streaming.open_streamed`, the driver with a :class:`BlockStore`,
:func:`write_streamed`), with random calibration token ids (the timing does not depend on them).
Prints each phase with its time, seconds per block (the solver's share and the rest: Hessian
collection and the block's forwards), and, when fewer blocks than the real model's were written,
the time extrapolated to the full depth (open + capture + depth x mean seconds per block + the write
scaled by the bytes a full-depth checkpoint would hold: the written blocks' bytes times depth / blocks,
plus the rest: embeddings, norms and head, written once), marked as extrapolated.

Shapes: ``7b`` (32 blocks, hidden 4096, MLP 11008, 32 heads, vocabulary 32000), ``70b`` (80 blocks,
hidden 8192, MLP 28672, GQA 64/8, vocabulary 128256), ``tiny`` (4 blocks, hidden 256, MLP 688, GQA
4/2, vocabulary 8192: the CPU check of this script).

    python benchmarks/large_model.py --shape tiny --windows 4 --seq-len 64 --device cpu   # here, seconds
    python benchmarks/large_model.py --shape 7b --blocks 2 --windows 128 --seq-len 2048    # one H200
    python benchmarks/large_model.py --shape 70b --blocks 1 --windows 128 --seq-len 2048 --methods pvq,gptq
    python benchmarks/large_model.py --shape 7b --blocks 2 --methods pvq --calib-dtype float32,bfloat16
    python benchmarks/large_model.py --shape 7b --blocks 1 --methods pvq --profile   # where the time goes

(``--profile`` over a whole 7B block ran past 150 s on an H200 under the profiler; the solve of one
layer is profiled by ``benchmarks/solver_profile.py``.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

SHAPES = {
    "tiny": dict(num_hidden_layers=4, hidden_size=256, intermediate_size=688, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=8192),
    "7b": dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
    "70b": dict(num_hidden_layers=80, hidden_size=8192, intermediate_size=28672, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=128256),
}


def block_tensors(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, m = cfg["hidden_size"], cfg["intermediate_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    return {"self_attn.q_proj.weight": (h, h), "self_attn.k_proj.weight": (kv, h), "self_attn.v_proj.weight": (kv, h),
            "self_attn.o_proj.weight": (h, h), "mlp.gate_proj.weight": (m, h), "mlp.up_proj.weight": (m, h),
            "mlp.down_proj.weight": (h, m), "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,)}


def write_model(path: Path, shape: str, blocks: int, max_len: int, device: torch.device) -> float:
    """Random bf16 weights as safetensors shards (+ config.json); returns the bytes written."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    cfg = dict(SHAPES[shape])
    full_depth = cfg["num_hidden_layers"]
    cfg["num_hidden_layers"] = blocks
    h, v = cfg["hidden_size"], cfg["vocab_size"]
    path.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(shape_):
        if len(shape_) == 1:
            return torch.ones(shape_, dtype=torch.bfloat16)
        return (torch.randn(shape_, generator=gen, device=device) * 0.02).to(torch.bfloat16).cpu()

    groups = [{f"model.layers.{i}.{k}": s for k, s in block_tensors(cfg).items()} for i in range(blocks)]
    groups += [{"model.embed_tokens.weight": (v, h)}, {"model.norm.weight": (h,), "lm_head.weight": (v, h)}]
    weight_map, total = {}, 0
    for k, group in enumerate(groups):
        file = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: rand(s) for n, s in group.items()}
        save_file(tensors, str(path / file), metadata={"format": "pt"})
        for n, t in tensors.items():
            weight_map[n] = file
            total += t.numel() * 2
        del tensors
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                   "weight_map": weight_map}))
    LlamaConfig(**cfg, max_position_embeddings=max(max_len, 4096), tie_word_embeddings=False,
                dtype="bfloat16").save_pretrained(path)
    (path / "full_depth.txt").write_text(str(full_depth))
    from pvq.models.reference import REFERENCE_DIR

    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):  # any tokenizer will do
        if (REFERENCE_DIR / f).is_file():
            shutil.copy(REFERENCE_DIR / f, path / f)
    return total


def run_one(args) -> dict:
    """Quantize the written model with one method (in this process); returns the measurements."""
    import pvq.kernels  # noqa: F401  (registers the solver's CUDA greedy fill, as `pvq quantize` does)
    from pvq.models import QuantizeConfig, quantize_model
    from pvq.models.resume import WorkDir, model_fingerprint, run_identity
    from pvq.models.streaming import BlockStore, open_streamed, peak_memory, write_streamed

    class TimedStore(BlockStore):
        def load_block(self, model, i):
            self.t[i] = time.perf_counter()
            return super().load_block(model, i)

        def block_done(self, model, i, stats):
            self.secs[i] = time.perf_counter() - self.t[i]
            self.solver[i] = sum(s.seconds for s in stats)
            print(f"  block {i}: {self.secs[i]:.1f} s (solver {self.solver[i]:.1f} s, Hessians and forwards "
                  f"{self.secs[i] - self.solver[i]:.1f} s)", flush=True)
            super().block_done(model, i, stats)

    device = torch.device(args.device)
    src, out = Path(args.dir) / "model", Path(args.dir) / f"out-{args.one}"
    phases = {}
    t = time.perf_counter()
    dtype = getattr(torch, args.one_dtype)
    model, _, source = open_streamed(src, dtype=dtype)
    phases["open"] = time.perf_counter() - t
    vocab = model.config.vocab_size
    calib = torch.randint(0, vocab, (args.windows, args.seq_len), generator=torch.Generator().manual_seed(0))
    # the method's rotation plan unless --rotation says (streamed runs fold blocks as they are read since
    # session 10; the figures of sessions 9 and 10 in docs/large_models.md ran the layer plan)
    config = QuantizeConfig(method=args.one, bits=args.bits, n_samples=args.windows, seq_len=args.seq_len,
                            rotation=args.rotation)
    work = WorkDir(out, run_identity(config, model_fingerprint(src), calib, device, args.batch_size), resume=False)
    store = TimedStore(work, source, dtype=dtype)
    store.t, store.secs, store.solver = {}, {}, {}
    t = time.perf_counter()
    profiler = None
    if args.profile:  # torch.profiler over the whole quantization (use with --blocks 1)
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        profiler = profile(activities=acts)
        profiler.__enter__()
    try:
        report = quantize_model(model, calib, config, device=device, progress=False, log=None, io=store,
                                batch_size=args.batch_size, activations=args.activations, scratch=work.path)
    finally:
        store.close()
    phases["quantize"] = time.perf_counter() - t
    if profiler is not None:
        profiler.__exit__(None, None, None)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(profiler.key_averages().table(sort_by=key, row_limit=25), flush=True)
    phases["capture"] = phases["quantize"] - sum(store.secs.values())
    t = time.perf_counter()
    write_streamed(model, store, out, report, overwrite=True, dtype=torch.bfloat16)
    work.remove()
    phases["write"] = time.perf_counter() - t
    blocks = len(store.secs)
    full = int((src / "full_depth.txt").read_text())
    per_block = sum(store.secs.values()) / blocks
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    in_blocks = _block_bytes(out)
    full_size = size - in_blocks + in_blocks * full / blocks
    shutil.rmtree(out, ignore_errors=True)
    return {"method": args.one, "calib_dtype": args.one_dtype, "bits_per_weight": report.bits_per_weight,
            "blocks": blocks, "full_depth": full,
            "phases": phases, "seconds_per_block": per_block,
            "solver_seconds_per_block": sum(store.solver.values()) / blocks,
            "extrapolated_seconds": phases["open"] + phases["capture"] + full * per_block
            + phases["write"] * full_size / size,
            "resident_peak_bytes": store.resident_peak, "checkpoint_bytes": size,
            "full_depth_checkpoint_bytes": int(full_size), **peak_memory(device)}


def _block_bytes(out: Path) -> int:
    """Bytes of the decoder blocks' tensors (names with ``.layers.<i>.``) in the checkpoint at ``out``."""
    import re

    from safetensors import safe_open

    total = 0
    for f in out.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                if re.search(r"\.layers\.\d+\.", name):
                    sl = st.get_slice(name)
                    numel = 1
                    for d in sl.get_shape():
                        numel *= d
                    total += numel * _DTYPE_BYTES[sl.get_dtype()]
    return total


_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
                "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=list(SHAPES), default="7b")
    p.add_argument("--blocks", type=int, default=None, help="decoder blocks to write (default: the shape's depth)")
    p.add_argument("--windows", type=int, default=128, help="calibration windows")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per window")
    p.add_argument("--bits", type=float, default=3.0)
    p.add_argument("--methods", default="pvq,gptq,e8")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--activations", default="auto", choices=("auto", "device", "cpu", "disk"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dir", default="/tmp/pvq-large-model", help="where the model and checkpoints are written")
    p.add_argument("--keep", action="store_true", help="keep the written model")
    p.add_argument("--profile", action="store_true", help="print torch.profiler's top operators of each method's run "
                   "(slows it down; use with --blocks 1)")
    p.add_argument("--rotation", default=None, choices=("fused", "layer", "none"),
                   help="rotation plan (default: the method's, as `pvq quantize --stream`)")
    p.add_argument("--calib-dtype", default="float32",
                   help="comma list of dtypes the blocks are loaded and calibrated in (float32, bfloat16: "
                        "`pvq quantize --calib-dtype`); each method runs once per dtype")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one method in this process
    p.add_argument("--one-dtype", default="float32", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return
    blocks = args.blocks or SHAPES[args.shape]["num_hidden_layers"]
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    size = write_model(root / "model", args.shape, blocks, args.seq_len, torch.device(args.device))
    print(f"{args.shape}-shaped Llama, {blocks} blocks, {size / 2**30:.2f} GiB bf16 written in "
          f"{time.perf_counter() - t:.1f} s; {args.windows} windows x {args.seq_len} tokens, {args.bits:g} bits, "
          f"device {args.device}", flush=True)
    rows = []
    for method, dtype in [(m, d) for m in args.methods.split(",") for d in args.calib_dtype.split(",")]:
        print(f"{method}, calibration in {dtype}:", flush=True)
        t = time.perf_counter()
        cmd = [sys.executable, __file__, *sys.argv[1:], "--one", method, "--one-dtype", dtype]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        lines = proc.stdout.splitlines()
        for line in lines:
            if not line.startswith("RESULT "):
                print(line)
        if proc.returncode != 0:
            print(f"  {method} failed (exit {proc.returncode})")
            continue
        r = json.loads(next(line for line in lines if line.startswith("RESULT "))[7:])
        r["process_seconds"] = time.perf_counter() - t
        rows.append(r)
        ph = r["phases"]
        print(f"  phases: open {ph['open']:.1f} s, plan and capture {ph['capture']:.1f} s, blocks {r['blocks']} x "
              f"{r['seconds_per_block']:.1f} s (solver {r['solver_seconds_per_block']:.1f} s), write {ph['write']:.1f} s; "
              f"process {r['process_seconds']:.1f} s; {r['bits_per_weight']:.3f} bits/weight; peak GPU "
              f"{r['peak_gpu_bytes'] / 2**30:.2f} GiB, peak CPU {r['peak_cpu_bytes'] / 2**30:.2f} GiB", flush=True)
    print()
    print("| method | calibration dtype | bits/w | s/block | solver s/block | blocks run | full depth | time for full depth | "
          "peak GPU GiB | peak CPU GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        extra = "" if r["blocks"] == r["full_depth"] else " (extrapolated)"
        print(f"| {r['method']} | {r['calib_dtype']} | {r['bits_per_weight']:.3f} | {r['seconds_per_block']:.1f} | "
              f"{r['solver_seconds_per_block']:.1f} | {r['blocks']} | {r['full_depth']} | "
              f"{r['extrapolated_seconds'] / 60:.1f} min{extra} | {r['peak_gpu_bytes'] / 2**30:.2f} | "
              f"{r['peak_cpu_bytes'] / 2**30:.2f} |")
    print("JSON " + json.dumps(rows))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
