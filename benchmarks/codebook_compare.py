"""LLM-Codebook on the reference model: plain vs Hessian-aware K-means, + LoRA, against pvq and gptq.

Prints one row per setting at about 2 and 3 bits per weight: measured bits per
weight of the quantized linears (codes + scales + codebooks, from the stored
tensors), held-out perplexity on the first ``--eval-tokens`` tokens (context
512), and the time to quantize (LoRA included).

    .venv/bin/python benchmarks/codebook_compare.py [--bits 2,3] [--rows ...] [--json]

Codebook sizes: at 2 bits D=4 (256 centroids per layer), at 3 bits D=2 (64
centroids), so the fp16 codebooks stay a small part of the rate on this
15.8M-parameter model (a 3-bit D=4 codebook of 4096 centroids would add about
1.2 bits per weight here).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pvq.eval.perplexity import perplexity
from pvq.eval.runs import eval_token_ids, load_model
from pvq.models import QuantizeConfig, calibration_batches, load_text, quantize_model
from pvq.models.reference import CALIB_TEXT

CODEBOOK_DIM = {2: 4, 3: 2}

ROWS = {
    # name: (method, options)
    "kmeans-plain": ("codebook", dict(options={"weighting": "none"}, error_feedback=False)),
    "kmeans-hessian": ("codebook", dict(options={"weighting": "hessian"}, error_feedback=False)),
    "kmeans-obs": ("codebook", dict(options={"weighting": "obs"}, error_feedback=False)),
    "kmeans-hessian+ldlq": ("codebook", dict(options={"weighting": "hessian"}, error_feedback=True)),
    "kmeans-hessian+ldlq+lora": ("codebook", dict(options={"weighting": "hessian"}, error_feedback=True, lora_steps=-1)),
    "pvq": ("pvq", {}),
    "gptq": ("gptq", {}),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bits", default="2,3", help="comma-separated target rates")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows from {list(ROWS)}")
    p.add_argument("--eval-tokens", type=int, default=16384)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lora-steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bits_list = [float(b) for b in args.bits.split(",")]
    rows = args.rows.split(",")
    for r in rows:
        if r not in ROWS:
            raise SystemExit(f"unknown row {r!r}; choose from {list(ROWS)}")

    model0, tok = load_model(None)
    state = {k: v.clone() for k, v in model0.state_dict().items()}
    calib = calibration_batches(load_text(CALIB_TEXT), tok, args.samples, args.seq_len, 0)
    ids = eval_token_ids(None, tok, args.eval_tokens)
    base = perplexity(model0, ids, context=512, stride=512)
    results = [{"row": "fp32 (unquantized)", "bits": None, "bits_per_weight": 32.0, "perplexity": base.perplexity,
                "seconds": 0.0}]
    print(f"{'setting':<28} {'target':>6} {'measured b/w':>12} {'perplexity':>11} {'time s':>8}", flush=True)
    print(f"{'fp32 (unquantized)':<28} {'-':>6} {32.0:>12.3f} {base.perplexity:>11.3f} {0.0:>8.1f}", flush=True)
    for bits in bits_list:
        for r in rows:
            method, opts = ROWS[r]
            opts = dict(opts)
            if opts.get("lora_steps") == -1:
                opts["lora_steps"] = args.lora_steps
            if method == "codebook":
                opts["dim"] = CODEBOOK_DIM.get(int(round(bits)), 2)
            config = QuantizeConfig(method=method, bits=bits, n_samples=args.samples, seq_len=args.seq_len, **opts)
            model, _ = load_model(None)
            model.load_state_dict(state)
            t = time.perf_counter()
            report = quantize_model(model, calib, config, progress=False, log=None)
            secs = time.perf_counter() - t
            ppl = perplexity(model, ids, context=512, stride=512).perplexity
            row = {"row": r, "bits": bits, "dim": config.dim, "bits_per_weight": report.bits_per_weight,
                   "perplexity": ppl, "seconds": secs, "notes": report.notes}
            results.append(row)
            print(f"{r:<28} {bits:>6g} {report.bits_per_weight:>12.3f} {ppl:>11.3f} {secs:>8.1f}", flush=True)
            del model
    if args.json:
        print(json.dumps({"eval_tokens": int(ids.numel()), "results": results}, indent=1))


if __name__ == "__main__":
    main()
