"""The whole model quantized: the input embedding and the LM head with the layers' codec
(``--quantize-embedding --quantize-head``) on the reference model as shipped (its head tied to the embedding).

    python benchmarks/embedding_ref.py --bits 2,3,4 [--method pvq] [--allocate] [--out docs/bench/embedding_ref_cpu.jsonl]

Per rate, two runs with the demo's settings (64 calibration windows of 256 tokens, perplexity on the first
32,768 held-out tokens at context 512): the tied table kept at fp16 (the demo's run), and the pair untied and
both tables quantized at the same ``--bits``; with ``--allocate`` a third: the whole model allocated
(``--allocate --allocate-count-embeddings``, fisher metric, the tables sized with the layers) at the second
run's measured whole-model rate. Prints the block rate, the embedding's and the head's rates, the
perplexity and the size of the block weights plus the tables (MB; norms left out: a few KB), and appends one
JSON line per run to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pvq.eval.perplexity import perplexity
from pvq.eval.runs import load_model
from pvq.models import QuantizeConfig, quantize_model
from pvq.models.allocation import AllocateConfig
from _reference import reference_inputs

LABELS = {"kept": "tied, kept (fp16)", "quantized": "both quantized (untied)",
          "allocated": "both quantized, allocated with the layers"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", default="2,3,4")
    ap.add_argument("--method", default="pvq")
    ap.add_argument("--out", default="docs/bench/embedding_ref_cpu.jsonl")
    ap.add_argument("--allocate", action="store_true", help="also the whole model allocated at the same measured rate")
    ap.add_argument("--only-allocated", action="store_true", help="skip the kept-table runs")
    args = ap.parse_args()
    demo, model, _, calib, ids = reference_inputs()
    base = perplexity(model, ids, context=demo.context, stride=demo.context).perplexity
    table = model.get_input_embeddings().weight.numel()
    print(f"reference model (tied), unquantized: perplexity {base:.3f}; its table {table:,} weights", flush=True)
    print("| method | --bits | tables | whole-model bits/w | block bits/w | embedding bits/w | head bits/w | "
          "perplexity | weights MB (blocks + tables) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for bits in [float(b) for b in args.bits.split(",")]:
        runs = [("kept", bits), ("quantized", bits)]
        for i, (kind, target) in enumerate(runs):
            if args.only_allocated and kind == "kept":
                continue
            whole = kind != "kept"
            m, _ = load_model(None)
            cfg = QuantizeConfig(method=args.method, bits=target, quantize_head=whole, quantize_embedding=whole,
                                 n_samples=demo.n_samples, seq_len=demo.seq_len, seed=demo.seed)
            alloc = AllocateConfig(count_embeddings=True) if kind == "allocated" else None
            t = time.perf_counter()
            report = quantize_model(m, calib, cfg, progress=False, log=None, allocation=alloc)
            secs = time.perf_counter() - t
            ppl = perplexity(m, ids, context=demo.context, stride=demo.context).perplexity
            tables = (report.embedding.stored_bits + report.head.stored_bits) if whole else table * 16
            total = report.stored_bits + tables
            overall = total / (report.num_weights + 2 * table)  # the two tables: untied, or tied counted once
            if not whole:
                overall = total / (report.num_weights + table)
            row = {"method": args.method, "bits": target, "tables": kind, "quantize_tables": whole,
                   "overall_bits_per_weight": overall, "bits_per_weight": report.bits_per_weight,
                   "embedding_bits_per_weight": report.embedding.bits_per_weight if whole else 16.0,
                   "head_bits_per_weight": report.head.bits_per_weight if whole else 16.0,
                   "perplexity": ppl, "model_bytes": total / 8, "quantize_seconds": secs, "unquantized_perplexity": base}
            print(f"| {args.method} | {target:g} | {LABELS[kind]} | {overall:.4f} | {report.bits_per_weight:.4f} | "
                  f"{row['embedding_bits_per_weight']:.4f} | {row['head_bits_per_weight']:.4f} | {ppl:.3f} | "
                  f"{total / 8 / 1e6:.2f} |", flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            if kind == "quantized" and args.allocate:
                runs.append(("allocated", overall))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
