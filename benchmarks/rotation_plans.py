"""Perplexity of the reference model under the three rotation plans (fused, layer, none).

Every method x bits x plan cell is quantized from the same unquantized weights with the same
calibration windows and scored on the same held-out tokens; bits per weight are measured from
the stored tensors; ``online`` is the online rotations per block the plan leaves at inference.

    python benchmarks/rotation_plans.py --device cuda                     # the README table
    python benchmarks/rotation_plans.py --methods pvq --bits 3 --eval-tokens 4096   # a quick look
    python benchmarks/rotation_plans.py --methods pvq --plans fused,fused:344,fused:24,layer   # chunked online rotations

A plan ``fused:B`` is ``fused`` with ``--rotation-block B`` (the online rotations block-diagonal, in chunks
of B inputs).

Prints one line per cell as it goes (with seconds), then a markdown table; writes OUT.json and
OUT.md with ``--out``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch
from _plans import PLANS, parse_plan
from _report import write_report

from pvq.eval.perplexity import perplexity
from pvq.eval.runs import eval_token_ids, load_model
from pvq.models import QuantizeConfig, calibration_batches, load_text, online_rotations_per_block, quantize_model
from pvq.models.reference import CALIB_TEXT, HELDOUT_TEXT

METHODS = {  # label -> (method, QuantizeConfig keyword arguments)
    "pvq": ("pvq", {}),
    "pvq D=8": ("pvq", {"dim": 8}),
    "gptq": ("gptq", {}),
    "e8": ("e8", {}),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(METHODS), help=f"labels among {', '.join(METHODS)}")
    p.add_argument("--bits", default="2,3,4")
    p.add_argument("--plans", default=",".join(PLANS))
    p.add_argument("--eval-tokens", type=int, default=32768, help="held-out tokens scored (0: all)")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="", help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    labels = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in labels if m not in METHODS]
    plans = [x.strip() for x in args.plans.split(",") if x.strip()]
    if bad or any(parse_plan(x) is None for x in plans):
        p.error(f"methods among {list(METHODS)}, plans among {list(PLANS)} or fused:B (B inputs a chunk)")
    bits = [float(b) for b in args.bits.split(",")]
    t0 = time.perf_counter()
    base, tok = load_model(None)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    ids = eval_token_ids(load_text(HELDOUT_TEXT), tok, args.eval_tokens or None)
    calib = calibration_batches(load_text(CALIB_TEXT), tok, args.samples, args.seq_len, args.seed)
    fp = perplexity(base, ids, context=args.context, stride=args.context, device=args.device).perplexity
    print(f"[{time.perf_counter() - t0:6.1f}s] unquantized: {fp:.4f} on {ids.numel()} tokens", flush=True)
    rows = []
    for label in labels:
        method, kw = METHODS[label]
        for b in bits:
            for plan in plans:
                m, _ = load_model(None)
                m.load_state_dict(state)
                rotation, block = parse_plan(plan)
                cfg = QuantizeConfig(method=method, bits=b, rotation=rotation, rotation_block=block,
                                     n_samples=args.samples, seq_len=args.seq_len, seed=args.seed, **kw)
                rep = quantize_model(m, calib, cfg, device=args.device, progress=False, log=None)
                ppl = perplexity(m, ids, context=args.context, stride=args.context, device=args.device).perplexity
                row = {"method": label, "bits": b, "plan": plan, "bits_per_weight": rep.bits_per_weight,
                       "perplexity": ppl, "online_rotations_per_block": online_rotations_per_block(m),
                       "quantize_seconds": rep.seconds, "notes": [n for n in rep.notes if "rotation plan" in n]}
                rows.append(row)
                print(f"[{time.perf_counter() - t0:6.1f}s] {label:8s} {b:g} bits {plan:9s}: ppl {ppl:.4f} "
                      f"({rep.bits_per_weight:.3f} b/w, {row['online_rotations_per_block']:g} online/block, "
                      f"quantized in {rep.seconds:.1f}s)", flush=True)
                del m
    out = {"model": "reference", "unquantized": fp, "eval_tokens": int(ids.numel()), "context": args.context,
           "calibration": {"samples": args.samples, "seq_len": args.seq_len, "seed": args.seed},
           "device": args.device, "device_name": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor(),
           "torch": torch.__version__, "command": "python benchmarks/rotation_plans.py " + " ".join(sys.argv[1:]),
           "rows": rows}
    md = markdown(out, plans)
    print(md)
    write_report(args.out, out, md)
    return 0


def markdown(out: dict, plans: list[str]) -> str:
    rows, fp = out["rows"], out["unquantized"]
    lines = [f"Reference model, {out['eval_tokens']} held-out tokens, context {out['context']}, unquantized {fp:.4f}. "
             "Each cell: perplexity, then measured bits per weight and online rotations per block.", "",
             "| method | bits | " + " | ".join(plans) + " | fused vs layer |", "|---|---|" + "---|" * (len(plans) + 1)]
    keys = sorted({(r["method"], r["bits"]) for r in rows}, key=lambda k: (list(METHODS).index(k[0]), k[1]))
    for label, b in keys:
        cells, by = [], {r["plan"]: r for r in rows if (r["method"], r["bits"]) == (label, b)}
        for plan in plans:
            r = by.get(plan)
            cells.append("" if r is None else f"{r['perplexity']:.3f}<br>{r['bits_per_weight']:.3f} b, "
                                              f"{r['online_rotations_per_block']:g} rot")
        rel = (f"{100 * (by['fused']['perplexity'] / by['layer']['perplexity'] - 1):+.2f}%"
               if "fused" in by and "layer" in by else "")
        lines.append(f"| {label} | {b:g} | " + " | ".join(cells) + f" | {rel} |")
    lines += ["", f"Command: `{out['command']}` ({out['device_name']}, torch {out['torch']}).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
