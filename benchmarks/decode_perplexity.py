"""Perplexity of a pvq checkpoint through the decode path: tokens fed one a step through the KV cache,
as ``pvq generate`` runs (on CUDA a static cache and the decode step replayed from a CUDA graph; every linear layer sees ``rows`` input rows a call: the one-row and several-row
products, not the whole-layer decode the 512-token windows of ``pvq eval`` take), per backend.

    python benchmarks/decode_perplexity.py CHECKPOINT [--backends dense,triton] [--rows 1,4]
        [--tokens 1024] [--device cuda] [--dtype float16] [--json FILE]

The held-out text of ``pvq eval``, its first ``--tokens`` tokens cut into ``rows`` sequences (each at most
the model's context) decoded side by side (:func:`pvq.eval.perplexity.perplexity_stepwise`). Per backend and row count: perplexity and
its relative difference from the first backend's (the dense path: a decoded weight cache and
``F.linear``).
"""

from __future__ import annotations

import argparse
import json

import torch

from pvq.eval import perplexity_stepwise
from pvq.eval.runs import eval_token_ids, load_model, model_context
from pvq.models import set_backend
from pvq.models.calibration import load_text
from pvq.models.reference import HELDOUT_TEXT


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--backends", default="dense,triton")
    p.add_argument("--rows", default="1,4")
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                   help="the model's dtype for every backend (16-bit inputs take the half2 products)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    model, tokenizer = load_model(a.checkpoint)
    model.to(device=a.device, dtype=getattr(torch, a.dtype))
    ids = eval_token_ids(load_text(HELDOUT_TEXT), tokenizer, a.tokens)
    rows_out = []
    print("| rows | backend | perplexity | vs first backend | scored tokens | seconds |\n|---|---|---|---|---|---|")
    context = model_context(model.config) or ids.numel()
    for rows in (int(r) for r in a.rows.split(",")):
        per_row = min(ids.numel() // rows, context)  # positions past the model's context would score garbage
        first = None
        for backend in a.backends.split(","):
            set_backend(model, backend)
            r = perplexity_stepwise(model, ids[: rows * per_row], rows=rows, device=a.device)
            first = r.perplexity if first is None else first
            rel = r.perplexity / first - 1
            rows_out.append({"rows": rows, "backend": backend, **r.to_dict(), "relative": rel})
            print(f"| {rows} | {backend} | {r.perplexity:.5f} | {rel:+.5%} | {r.tokens} | {r.seconds:.1f} |", flush=True)
            set_backend(model, None)  # drop this backend's runtime tensors before the next
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"checkpoint": a.checkpoint, "rows": rows_out}, f, indent=1)


if __name__ == "__main__":
    main()
