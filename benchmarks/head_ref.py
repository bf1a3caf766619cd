"""The LM head quantized with the layers' codec (``--quantize-head``) on an untied copy of the reference model.

    python benchmarks/head_ref.py --bits 2,3,4 [--method pvq] [--out docs/bench/head_ref_cpu.jsonl]

The reference model ties its head to the input embedding, which ``--quantize-head`` refuses; this copy gets
its own head (the same values), so the unquantized model is the reference's. Per rate, two runs with the
demo's settings (64 calibration windows of 256 tokens, perplexity on the first 32,768 held-out tokens at
context 512): the head kept, and the head quantized at the same ``--bits``. Prints the block rate, the
head's rate, the perplexity and the model's size of the block weights, the input embedding at fp16 and the head (MB; norms left out), and
appends one JSON line per run to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pvq.eval.perplexity import perplexity
from pvq.eval.runs import load_model
from pvq.models import QuantizeConfig, quantize_model
from _reference import reference_inputs


def untied(model):
    """``model`` with its LM head a copy of the input embedding (same values) and the config untied."""
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    model.config.tie_word_embeddings = False
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", default="2,3,4")
    ap.add_argument("--method", default="pvq")
    ap.add_argument("--out", default="docs/bench/head_ref_cpu.jsonl")
    args = ap.parse_args()
    demo, model, _, calib, ids = reference_inputs()
    state = {k: v.clone() for k, v in untied(model).state_dict().items()}
    base = perplexity(model, ids, context=demo.context, stride=demo.context).perplexity
    print(f"untied reference, unquantized: perplexity {base:.3f}", flush=True)
    print("| method | --bits | head | block bits/w | head bits/w | perplexity | weights MB (blocks, embedding fp16, head) |")
    print("|---|---|---|---|---|---|---|")
    for bits in [float(b) for b in args.bits.split(",")]:
        for head in (False, True):
            m, _ = load_model(None)
            m = untied(m)
            m.load_state_dict(state)
            cfg = QuantizeConfig(method=args.method, bits=bits, quantize_head=head, n_samples=demo.n_samples,
                                 seq_len=demo.seq_len, seed=demo.seed)
            t = time.perf_counter()
            report = quantize_model(m, calib, cfg, progress=False, log=None)
            secs = time.perf_counter() - t
            ppl = perplexity(m, ids, context=demo.context, stride=demo.context).perplexity
            emb = m.get_input_embeddings().weight.numel()
            out_w = m.get_output_embeddings()
            head_bits = report.head.stored_bits if report.head is not None else out_w.weight.numel() * 16
            total = report.stored_bits + emb * 16 + head_bits
            row = {"method": args.method, "bits": bits, "quantize_head": head, "bits_per_weight": report.bits_per_weight,
                   "head_bits_per_weight": report.head.bits_per_weight if report.head is not None else 16.0,
                   "perplexity": ppl, "model_bytes": total / 8, "quantize_seconds": secs, "unquantized_perplexity": base}
            print(f"| {args.method} | {bits:g} | {'quantized' if head else 'kept (fp16)'} | {report.bits_per_weight:.4f} | "
                  f"{row['head_bits_per_weight']:.4f} | {ppl:.3f} | {total / 8 / 1e6:.2f} |", flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
