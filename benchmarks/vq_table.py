"""The reviewers' comparison on the reference model: every method at about 2, 3 and 4 bits.

One row per (method setting, target rate): measured bits per weight of the quantized linears
(from the stored tensors: codes, scales, zero points and every codebook), held-out perplexity
on the first ``--eval-tokens`` tokens (context 512), quantize seconds, and the Gaussian MSE of
the method's codec at 2 bits from ``pvq rd`` (unit-variance i.i.d. source, the codec alone:
no Hessian, no rotation). The same 64 calibration windows of 256 tokens (seed 0) for every row.
Rows are run rate by rate (all methods at the first rate first); each finished row is appended
to ``--out`` (JSON lines), so an interrupted run keeps what it finished.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/vq_table.py --bits 2,3,4 --out vq_table.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pvq.eval.perplexity import perplexity
from pvq.eval.rd import RDConfig, run_rd
from pvq.eval.runs import eval_token_ids, load_model
from pvq.models import QuantizeConfig, calibration_batches, load_text, quantize_model
from pvq.models.reference import CALIB_TEXT, HELDOUT_TEXT

ROWS = {
    # row: (method, QuantizeConfig overrides)
    "pvq": ("pvq", {}),
    "gptq": ("gptq", {}),
    "gptq-act": ("gptq", {"act_order": True}),
    "rtn": ("rtn", {}),
    "e8": ("e8", {}),
    "trellis": ("trellis", {}),
    "lattice": ("lattice", {}),
    "codebook": ("codebook", {}),
    "aqlm": ("aqlm", {}),
    "aqlm-ft": ("aqlm", {"finetune_steps": 100}),  # AQLM's block fine-tuning of codebooks and scales
    "gptvq": ("gptvq", {}),
    "vptq": ("vptq", {}),
}


def rd_mse(method: str, dim: int, samples: int) -> float | None:
    """Gaussian MSE of the method's codec at 2 bits and D = ``dim`` (``pvq rd``'s bench)."""
    codec = QuantizeConfig(method=method, bits=2.0).spec.codec
    try:
        res = run_rd(RDConfig(codecs=(codec,), dims=(dim,), bits=(2.0,), samples=samples))
    except Exception as err:  # a codec that cannot reach the setting: reported, not fatal
        print(f"rd {codec} D={dim}: {err}", flush=True)
        return None
    return res[0].mse if res else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bits", default="2,3,4")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--eval-tokens", type=int, default=32768)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--rd-samples", type=int, default=1 << 15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="vq_table.jsonl")
    p.add_argument("--device", default="cpu", help="where quantization and evaluation run (cuda: the trellis row)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = args.rows.split(",")
    for r in rows:
        if r not in ROWS:
            raise SystemExit(f"unknown row {r!r}; choose from {list(ROWS)}")
    bits_list = [float(b) for b in args.bits.split(",")]
    model0, tok = load_model(None)
    for r in rows:  # every setting checked against the model before the first long run
        for b in bits_list:
            method, over = ROWS[r]
            QuantizeConfig(method=method, bits=b, **over).plan(model0)
    state = {k: v.clone() for k, v in model0.state_dict().items()}
    calib = calibration_batches(load_text(CALIB_TEXT), tok, args.samples, args.seq_len, 0)
    ids = eval_token_ids(load_text(HELDOUT_TEXT), tok, args.eval_tokens)
    base = perplexity(model0, ids, context=512, stride=512, device=args.device).perplexity
    print(f"fp32 perplexity {base:.3f} on {ids.numel()} tokens", flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps({"row": "fp32", "perplexity": base, "eval_tokens": int(ids.numel())}) + "\n")
    mse_cache: dict[tuple[str, int], float | None] = {}
    for bits in bits_list:
        for r in rows:
            method, over = ROWS[r]
            cfg = QuantizeConfig(method=method, bits=bits, n_samples=args.samples, seq_len=args.seq_len, **over)
            model, _ = load_model(None)
            model.load_state_dict(state)
            t0 = time.perf_counter()
            report = quantize_model(model, calib, cfg, device=args.device, progress=False, log=None)
            secs = time.perf_counter() - t0
            ppl = perplexity(model, ids, context=512, stride=512, device=args.device).perplexity
            d2 = QuantizeConfig(method=method, bits=2.0, **over).default_dim()
            if (method, d2) not in mse_cache:
                mse_cache[(method, d2)] = rd_mse(method, d2, args.rd_samples)
            settings = sorted({s.codec for s in report.layers})
            row = {"row": r, "method": method, "device": args.device, "target_bits": bits,
                   "bits_per_weight": report.bits_per_weight,
                   "perplexity": ppl, "quantize_seconds": secs, "rd_gaussian_mse_2bit": mse_cache[(method, d2)],
                   "rd_dim": d2, "settings": settings}
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            del model


if __name__ == "__main__":
    main()
