"""Perplexity against stored (entropy-coded) bits per weight on the reference model.

For each method and rate: quantize (the demo's settings: 64 calibration windows of 256
tokens, seed 0), measure the fixed-rate bits per weight (``bits_per_weight``), the bits
after lossless coding of every layer's streams (``stored_bits_per_weight``, what
``pvq quantize --entropy-code`` writes), the gain per stream summed over layers (PVQ's
index and gain fields separately), and held-out perplexity (first 32,768 tokens, context 512).

    PYTHONPATH=$PWD python benchmarks/entropy_table.py --methods ecsq,gptq,pvq,e8 --bits 2,3,4 \
        --json docs/entropy_table.json

Prints one markdown row per setting as it goes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from pvq.codecs.coded import code_report
from pvq.eval.perplexity import perplexity
from pvq.eval.runs import CALIB_TEXT, HELDOUT_TEXT, calibration_batches, eval_token_ids, load_model, load_text
from pvq.models import QuantizeConfig, quantize_model
from pvq.models.qlinear import QuantizedLinear


def streams(model) -> dict:
    """Per stream name, summed over layers: fixed, entropy and coded bits; and the layer totals."""
    out: dict[str, dict] = {}
    fixed = coded = 0
    for m in model.modules():
        if not isinstance(m, QuantizedLinear):
            continue
        rep = code_report(m.codec, {k: v.cpu() for k, v in m.stored_tensors().items()}, m.num_vectors)
        # a layer is stored coded only when that is smaller (pvq.models.coding.entropy_code_model)
        fixed, coded = fixed + rep["fixed_bits"], coded + min(rep["coded_bits"], rep["fixed_bits"])
        for k, v in rep["streams"].items():
            s = out.setdefault(k, {"entropy_bits": 0.0, "coded_bits": 0})
            s["entropy_bits"] += v["entropy_bits"]
            s["coded_bits"] += v["coded_bits"]
    return {"fixed_bits": fixed, "coded_bits": coded, "streams": out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default="ecsq,gptq,pvq,e8")
    p.add_argument("--bits", default="2,3,4")
    p.add_argument("--runs", default=None, help="method:bits pairs in this order, e.g. ecsq:4,gptq:4 (overrides)")
    p.add_argument("--eval-tokens", type=int, default=32768)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    model0, tok = load_model(None)
    state = {k: v.clone() for k, v in model0.state_dict().items()}
    calib = calibration_batches(load_text(CALIB_TEXT), tok, args.samples, 256, 0)
    ids = eval_token_ids(load_text(HELDOUT_TEXT), tok, args.eval_tokens)
    base = perplexity(model0, ids, context=512, stride=512)
    rows = [{"method": "none", "bits": None, "perplexity": base.perplexity}]
    print(f"unquantized perplexity {base.perplexity:.3f}", flush=True)
    print("| method | target | bits/weight (fixed) | stored bits/weight (coded) | perplexity | quantize s |", flush=True)
    runs = [(m, float(b)) for m in args.methods.split(",") for b in args.bits.split(",")]
    if args.runs:
        runs = [(r.split(":")[0], float(r.split(":")[1])) for r in args.runs.split(",")]
    for method, bits in runs:
        model, _ = load_model(None)
        model.load_state_dict(state)
        t = time.perf_counter()
        report = quantize_model(model, calib, QuantizeConfig(method=method, bits=bits, n_samples=args.samples),
                                progress=False, log=None)
        qs = time.perf_counter() - t
        s = streams(model)
        kept = report.stored_bits - report.quantized_bits
        stored = (kept + s["coded_bits"]) / report.num_weights
        ppl = perplexity(model, ids, context=512, stride=512).perplexity
        row = {"method": method, "bits": bits, "bits_per_weight": report.bits_per_weight,
               "stored_bits_per_weight": stored, "perplexity": ppl, "quantize_seconds": qs,
               "num_weights": report.num_weights, **{k: s[k] for k in ("fixed_bits", "coded_bits")},
               "streams": {k: {kk: vv / report.num_weights for kk, vv in v.items()} for k, v in s["streams"].items()}}
        rows.append(row)
        print(f"| {method} | {bits:g} | {report.bits_per_weight:.3f} | {stored:.3f} | {ppl:.3f} | {qs:.0f} |",
              flush=True)
        print("    streams (bits/weight: entropy, coded alone): " + ", ".join(
            f"{k} {v['entropy_bits']:.3f} / {v['coded_bits']:.3f}" for k, v in row["streams"].items()),
            file=sys.stderr, flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"rows": rows, "eval_tokens": args.eval_tokens, "torch": torch.__version__}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
