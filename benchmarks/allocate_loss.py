"""Allocation by the calibration loss itself (EXL2's way), against uniform and the fisher metric, on the reference model.

    python benchmarks/allocate_loss.py --bits 1.9647249190938512 [--loss-windows 16] [--out docs/bench/allocate_loss_cpu.jsonl]

An experiment, not a pvq option: does a per-layer distortion that *is* the model's loss do better than the
fisher metric's second-order estimate? Inside one ``quantize_model`` run (so the layers are measured on the
model the run quantizes, the fused plan folded), every layer's candidates (the allocation's ladder, target
-1 .. +1 every 0.25 bits) are solved whole under the Hessians of the ``block`` metric's pass (inputs of the
earlier blocks quantized at the target); each candidate is then put alone into the otherwise unquantized
model and the mean next-token loss on the first ``--loss-windows`` calibration windows is measured; its
increase (0 where the noise makes it negative) is the distortion. The same Lagrangian allocator chooses a rate per layer under the budget of
``--bits`` on the block weights, the run quantizes with those codecs, and the held-out perplexity is taken
with the demo's settings (first 32,768 held-out tokens, context 512). Prints the plan and the result, and
appends one JSON line to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace

import torch

from pvq.eval.perplexity import perplexity
from pvq.models import QuantizeConfig, QuantizePlan, quantize_model
from pvq.models.allocation import AllocateConfig, measure
from pvq.models.structure import linear_weight
from pvq.solvers.allocate import RatePoint, allocate
from _reference import reference_inputs


def mean_loss(model, ids: torch.Tensor, batch: int = 8) -> float:
    """Mean next-token loss of ``model`` on ``ids [n, len]`` (no gradient)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, ids.shape[0], batch):
            x = ids[s:s + batch]
            total += float(model(input_ids=x, labels=x).loss) * x.shape[0] * (x.shape[1] - 1)
            count += x.shape[0] * (x.shape[1] - 1)
    return total / count


class LossAllocation:
    """The driver's allocation hook (``base_plan``, ``check``, ``apply``) with the loss as the distortion."""

    def __init__(self, windows: int, say=print):
        self.base = AllocateConfig(metric="block")
        self.windows = windows
        self.say = say
        self.record: dict = {}

    def base_plan(self, config, model) -> QuantizePlan:
        return self.base.base_plan(config, model)

    def check(self, config) -> None:
        self.base.check(config)

    def apply(self, model, calib_ids, plan: QuantizePlan, device, batch_size=8, say=print):
        config = plan.config
        t0 = time.perf_counter()
        cands = self.base.candidates(config, plan)
        keep: dict = {}
        points = measure(model, calib_ids, plan, cands, self.base, device, batch_size, say, keep=keep)
        ids = calib_ids[:self.windows]
        base = mean_loss(model, ids)
        self.say(f"measured {sum(len(v) for v in points.values())} candidates in {time.perf_counter() - t0:.0f} s; "
                 f"unquantized calibration loss {base:.5f}")
        t1 = time.perf_counter()
        for p in plan.layers:
            w = linear_weight(model.get_submodule(p.name))
            original = w.detach().clone()
            out = []
            with torch.no_grad():
                for c in points[p.name]:
                    w.copy_(keep[(p.name, c.rate)].to(w.dtype))
                    out.append(replace(c, distortion=max(mean_loss(model, ids) - base, 0.0)))  # noise can lower it
                w.copy_(original)
            points[p.name] = out
        self.say(f"loss of every candidate in {time.perf_counter() - t1:.0f} s")
        weights = sum(p.out_features * p.in_features for p in plan.layers)
        budget = int(math.floor(config.bits * weights))
        a = allocate([[RatePoint(c.stored_bits, c.distortion) for c in points[p.name]] for p in plan.layers], budget)
        layers = [replace(p, codec=points[p.name][j].codec) for p, j in zip(plan.layers, a.choice)]
        self.record = {p.name: {"bits_per_weight": points[p.name][j].stored_bits / (p.out_features * p.in_features),
                                "loss_increase": points[p.name][j].distortion}
                       for p, j in zip(plan.layers, a.choice)}
        for n, r in self.record.items():
            self.say(f"  {n:<40} {r['bits_per_weight']:.3f} b/w  loss +{r['loss_increase']:.5f}")
        new = QuantizePlan(config, layers, plan.num_blocks, path=plan.path, rotation=plan.rotation)
        new.notes = list(plan.notes)
        return new, {"target_bits": config.bits, "predicted_bits": a.bits, "layers": self.record}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=float, default=1.9647249190938512, help="budget on the block weights (default: "
                    "the measured rate of uniform pvq --bits 2)")
    ap.add_argument("--loss-windows", type=int, default=16)
    ap.add_argument("--out", default="docs/bench/allocate_loss_cpu.jsonl")
    ap.add_argument("--calib", default=None, help="calibration text file (default: the demo's calib.txt, training text)")
    args = ap.parse_args()
    demo, model, _, calib, ids = reference_inputs(calib_text=args.calib)
    cfg = QuantizeConfig(method="pvq", bits=args.bits, n_samples=demo.n_samples, seq_len=demo.seq_len, seed=demo.seed)
    alloc = LossAllocation(args.loss_windows)
    t = time.perf_counter()
    report = quantize_model(model, calib, cfg, progress=False, log=None, allocation=alloc)
    secs = time.perf_counter() - t
    ppl = perplexity(model, ids, context=demo.context, stride=demo.context).perplexity
    print(f"pvq allocated by the calibration loss: {report.bits_per_weight:.4f} bits per weight (target {args.bits:.4f}), "
          f"held-out perplexity {ppl:.3f} ({secs:.0f} s)", flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps({"method": "pvq", "metric": "calibration loss", "calib": args.calib or "calib.txt",
                            "target": args.bits,
                            "bits_per_weight": report.bits_per_weight, "perplexity": ppl, "seconds": secs,
                            "loss_windows": args.loss_windows, "layers": alloc.record}) + "\n")


if __name__ == "__main__":
    main()
