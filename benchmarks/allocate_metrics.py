"""Which distortion predicts held-out perplexity: the solver's proxy loss, the block output error, or
the proxy weighted by the loss's sensitivity to the layer's output (``fisher``)?

    python benchmarks/allocate_metrics.py --blocks 0,2,5,7 --rates 1.5,2.0,2.5 --eval-tokens 4096

On the reference model (pvq, calibration as the demo: 64 windows of 256 tokens of calib.txt), each
layer of the chosen blocks is solved at each rate (``--allocate``'s measurement pass, whole layers,
``--allocate-metric block`` so that both distortions are recorded). Then, one (layer, rate) at a
time, only that layer's weight is replaced by its quantized one in the unquantized model and the
held-out NLL increase is measured on the first ``--eval-tokens`` tokens (context 512). Printed:
Spearman rank correlation of each metric with the NLL increase, over all points and across layers
at each rate (the comparison the allocator makes), and the JSON of every point (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from pvq.eval.perplexity import perplexity
from pvq.eval.runs import DemoConfig, eval_token_ids, load_model
from pvq.models import QuantizeConfig, QuantizePlan, calibration_batches, load_text
from pvq.models.allocation import AllocateConfig, measure, output_sensitivity
from pvq.models.reference import CALIB_TEXT, HELDOUT_TEXT
from pvq.models.structure import linear_weight


def spearman(a: list[float], b: list[float]) -> float:
    ra = torch.tensor(a, dtype=torch.float64).argsort().argsort().double()
    rb = torch.tensor(b, dtype=torch.float64).argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / math.sqrt(float((ra * ra).sum() * (rb * rb).sum())))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", default="0,2,5,7")
    ap.add_argument("--rates", default="1.5,2.0,2.5")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--out", default="docs/allocate_metrics.json")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    demo = DemoConfig(plot=None, zeroshot_limit=0)
    rates = [float(r) for r in args.rates.split(",")]
    blocks = {int(b) for b in args.blocks.split(",")}
    model, tok = load_model(None)
    calib = calibration_batches(load_text(CALIB_TEXT), tok, demo.n_samples, demo.seq_len, demo.seed)
    ids = eval_token_ids(load_text(HELDOUT_TEXT), tok, args.eval_tokens)
    cfg = QuantizeConfig(method="pvq", bits=rates[len(rates) // 2], n_samples=demo.n_samples, seq_len=demo.seq_len)
    full = cfg.plan(model)
    plan = QuantizePlan(cfg, [p for p in full.layers if p.block in blocks], full.num_blocks, path=full.path)
    alloc = AllocateConfig("block", min(rates), max(rates), step=min(b - a for a, b in zip(rates, rates[1:])), rows=1)
    t = time.perf_counter()
    keep: dict = {}
    points = measure(model, calib, plan, alloc.candidates(cfg, plan), alloc, torch.device("cpu"), 8, print, keep)
    print(f"measured in {time.perf_counter() - t:.0f} s", flush=True)
    with torch.enable_grad():
        sens = output_sensitivity(model, calib, [p.name for p in plan.layers], torch.device("cpu"), 8)
    base = math.log(perplexity(model, ids, context=demo.context, stride=demo.context).perplexity)
    rows = []
    for p in plan.layers:
        w = linear_weight(model.get_submodule(p.name))
        original = w.detach().clone()
        for c in points[p.name]:
            w.copy_(keep[(p.name, c.rate)].to(w.dtype))
            nll = math.log(perplexity(model, ids, context=demo.context, stride=demo.context).perplexity)
            w.copy_(original)
            rows.append({"layer": p.name, "rate": c.rate, "bits_per_weight": c.stored_bits / (p.out_features * p.in_features),
                         "proxy": c.proxy, "block": c.distortion, "fisher": c.proxy * sens[p.name],
                         "delta_nll": nll - base})
            print(json.dumps(rows[-1]), flush=True)
    out = {"base_nll": base, "eval_tokens": int(ids.numel()), "points": rows, "spearman": {}}
    for metric in ("proxy", "block", "fisher"):
        s = {"all": spearman([r[metric] for r in rows], [r["delta_nll"] for r in rows])}
        for rate in rates:
            rs = [r for r in rows if r["rate"] == rate]
            if len(rs) > 2:
                s[f"across layers at {rate:g}"] = spearman([r[metric] for r in rs], [r["delta_nll"] for r in rs])
        out["spearman"][metric] = s
        print(metric, json.dumps(s), flush=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
