"""Weight + activation quantization on the reference model: PVQ against QuaRot-style RTN baselines.

Perplexity for weight bits {16, 4, 3} x activation bits {16, 8, ~6, ~4}, every configuration
under the same rotation plan (``--rotation layer``: each layer's own ``V`` on its input, ``U``
on its output; ``--rotation fused``: the residual stream and heads rotated in the weights, one
online Hadamard on down_proj's input, which is QuaRot's own recipe; both rotate the operands
before round to nearest):

* ``pvq/pvq``   - PVQ weights (LDLQ, Hessian gains), PVQ activations (pyramid points per
  vector of D = the weights' D, so the product runs on integer points: backend ``act-int``);
* ``pvq/rtn``   - PVQ weights, per-token RTN activations (also an integer product);
* ``rtn/rtn``   - QuaRot-RTN: rotated RTN weights (uniform, groups of 128), RTN activations;
* ``gptq/rtn``  - QuaRot-GPTQ: rotated GPTQ weights, RTN activations;
* W16 rows: the unquantized weights with PVQ or RTN activations (``ActQuantLinear``).

Bits are measured: bits per weight from the stored tensors (scales, zero points counted),
bits per activation from each layer's quantizer (gains, per-token scales counted), both
averaged over the decoder linears. Weights are quantized once per (method, bits) on
unquantized activations; the activation settings are then put on the same quantized model.

    python benchmarks/act_table.py                       # writes docs/act_quant.json and .md
    python benchmarks/act_table.py --rotation fused --out docs/act_quant_fused   # under the fused plan
    python benchmarks/act_table.py --eval-tokens 2048 --weights pvq:4 --acts 4   # a quick look
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch
from _report import write_report

from pvq.eval.perplexity import perplexity
from pvq.eval.runs import eval_token_ids, load_model
from pvq.models import (
    ActivationQuant,
    QuantizeConfig,
    QuantizedLinear,
    bits_per_activation,
    calibration_batches,
    fold_rotations,
    load_text,
    quantize_model,
    set_activation_quant,
)
from pvq.models.reference import CALIB_TEXT, HELDOUT_TEXT

LABELS = {
    ("pvq", "pvq"): "PVQ W + PVQ A",
    ("pvq", "rtn"): "PVQ W + RTN A",
    ("rtn", "rtn"): "QuaRot-RTN",
    ("gptq", "rtn"): "QuaRot-GPTQ",
    ("none", "pvq"): "PVQ A",
    ("none", "rtn"): "RTN A",
}


def _pairs(text: str) -> list[tuple[str, float]]:
    out = []
    for item in text.split(","):
        method, _, bits = item.partition(":")
        out.append((method.strip(), float(bits)))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=_pairs, default=_pairs("pvq:4,pvq:3,rtn:4,rtn:3,gptq:4,gptq:3"),
                   help="weight configurations method:bits (default pvq, rtn, gptq at 4 and 3)")
    p.add_argument("--acts", default="8,6,4", help="activation bits (default 8,6,4)")
    p.add_argument("--act-clip", type=float, default=1.0, help="rtn activations: clipping ratio (default 1.0)")
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rotation", default="layer", choices=("layer", "fused"), help="rotation plan (default layer)")
    p.add_argument("--out", default="docs/act_quant", help="writes OUT.json and OUT.md ('' for none)")
    args = p.parse_args(argv)
    acts = [float(a) for a in args.acts.split(",") if a.strip()]
    torch.manual_seed(args.seed)

    base_model, tok = load_model(None)
    state = {k: v.clone() for k, v in base_model.state_dict().items()}
    ids = eval_token_ids(load_text(HELDOUT_TEXT), tok, args.eval_tokens)
    calib = calibration_batches(load_text(CALIB_TEXT), tok, args.samples, args.seq_len, args.seed)
    rows: list[dict] = []

    def fresh():
        m, _ = load_model(None)
        m.load_state_dict(state)
        return m

    def evaluate(model, weights, w_target, bpw, act, note=""):
        t = time.perf_counter()
        r = perplexity(model, ids, context=args.context, stride=args.context, device=args.device)
        backends = sorted({m.backend for m in model.modules() if isinstance(m, QuantizedLinear)} - {None})
        row = {
            "weights": weights, "w_target": w_target, "bits_per_weight": bpw,
            "acts": "none" if act is None else act.method, "a_target": None if act is None else act.bits,
            "bits_per_activation": bits_per_activation(model, 16.0),
            "perplexity": r.perplexity, "eval_seconds": time.perf_counter() - t, "backends": backends,
        }
        rows.append(row)
        print(f"W {weights:5s} {w_target or 16:>4g} ({bpw:.3f} b/w)  A {row['acts']:5s} "
              f"{row['a_target'] or 16:>4g} ({row['bits_per_activation']:.3f} b/a): ppl {r.perplexity:.4f} "
              f"[{', '.join(backends) or 'plain'}{note}] {row['eval_seconds']:.0f}s", file=sys.stderr, flush=True)
        return row

    def act_setting(method, bits):
        return ActivationQuant(method, bits, rotate=True, clip=args.act_clip if method == "rtn" else 1.0)

    evaluate(base_model, "none", None, 16.0, None)
    for method in ("pvq", "rtn"):
        for bits in acts:
            m = fresh()
            if args.rotation == "fused":
                fold_rotations(m, args.seed)
            set_activation_quant(m, act_setting(method, bits), seed=args.seed, plain=True)
            evaluate(m, "none", None, 16.0, act_setting(method, bits))
            del m
    for w_method, w_bits in args.weights:
        m = fresh()
        # under fused, o_proj keeps an online input rotation only when the run quantizes activations:
        # the weights are quantized for that plan (act_bits set), then the A16 row switches them off
        act_kw = {"act_bits": acts[0], "act_method": "rtn"} if args.rotation == "fused" and acts else {}
        cfg = QuantizeConfig(method=w_method, bits=w_bits, rotation=args.rotation, n_samples=args.samples,
                             seq_len=args.seq_len, seed=args.seed, **act_kw)
        rep = quantize_model(m, calib, cfg, device=args.device, progress=False, log=None)
        set_activation_quant(m, None)
        print(f"quantized {w_method} {w_bits:g}: {rep.bits_per_weight:.3f} b/w in {rep.seconds:.0f}s",
              file=sys.stderr, flush=True)
        bpw = rep.bits_per_weight
        evaluate(m, w_method, w_bits, bpw, None)
        for a_method in (("pvq", "rtn") if w_method == "pvq" else ("rtn",)):
            for bits in acts:
                act = act_setting(a_method, bits)
                set_activation_quant(m, act)
                evaluate(m, w_method, w_bits, bpw, act)
        del m

    out = {
        "model": "reference", "eval_tokens": int(ids.numel()), "context": args.context,
        "calibration": {"samples": args.samples, "seq_len": args.seq_len, "seed": args.seed},
        "act_clip": args.act_clip, "rotation": args.rotation, "device": args.device, "torch": torch.__version__,
        "machine": platform.machine(), "command": "python benchmarks/act_table.py " + " ".join(sys.argv[1:]),
        "rows": rows,
    }
    md = markdown(out, acts)
    print(md)
    write_report(args.out, out, md)
    return 0


def markdown(out: dict, acts: list[float]) -> str:
    rows = out["rows"]
    base = next(r for r in rows if r["weights"] == "none" and r["acts"] == "none")["perplexity"]
    w_targets = sorted({r["w_target"] for r in rows if r["w_target"]}, reverse=True)
    cols = [("pvq", "pvq"), ("pvq", "rtn"), ("rtn", "rtn"), ("gptq", "rtn")]

    def cell(r):
        return (f"{r['perplexity']:.3f} ({100 * (r['perplexity'] / base - 1):+.1f}%)<br>"
                f"{r['bits_per_weight']:.2f} / {r['bits_per_activation']:.2f}")

    lines = [
        f"Held-out perplexity of the reference model ({out['eval_tokens']} tokens, context {out['context']}; "
        f"unquantized: {base:.3f}). Each cell: perplexity (change against unquantized), then measured "
        f"bits per weight / bits per activation (everything counted). Rotation plan {out.get('rotation', 'layer')} "
        "everywhere.",
        "",
        "| weights | activations | " + " | ".join(LABELS[c] for c in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for a in [None] + acts:
        rs = [r for r in rows if r["weights"] == "none" and (r["a_target"] == a)]
        cells = []
        for c in cols:
            hit = [r for r in rs if r["acts"] == (c[1] if a else "none")] if c in (("pvq", "pvq"), ("pvq", "rtn")) else []
            if a is None:
                hit = rs if c == ("pvq", "pvq") else []
            cells.append(cell(hit[0]) if hit else "")
        label = "W16" + (" (activations: PVQ A / RTN A)" if a else "")
        lines.append(f"| {label} | {'A16' if a is None else f'A{a:g}'} | " + " | ".join(cells) + " |")
    for w in w_targets:
        for a in [None] + acts:
            cells = []
            for wm, am in cols:
                hit = [r for r in rows if r["weights"] == wm and r["w_target"] == w
                       and r["acts"] == ("none" if a is None else am) and r["a_target"] == a]
                cells.append(cell(hit[0]) if hit else "")
            lines.append(f"| W{w:g} | {'A16' if a is None else f'A{a:g}'} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{out['command']}` ({out['device']}, torch {out['torch']}).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
