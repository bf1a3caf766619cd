"""Quantize the reference model as `pvq demo` does (64 x 256 calibration tokens, seed 0) with a given
torch thread count; print the perplexity (first 32,768 held-out tokens, context 512) and a sha256 of
the whole state dict (every stored tensor), so two runs can be compared bit for bit.

    python benchmarks/determinism.py --threads 1 --method pvq --bits 2
    ATEN_CPU_CAPABILITY=avx2 python benchmarks/determinism.py --threads 1   # torch's AVX2 kernels
"""

from __future__ import annotations

import argparse
import hashlib
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--method", default="pvq")
    ap.add_argument("--bits", type=float, default=2.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from pvq.eval.perplexity import perplexity
    from pvq.eval.runs import eval_token_ids, load_model
    from pvq.models import QuantizeConfig, calibration_batches, load_text, quantize_model
    from pvq.models.reference import CALIB_TEXT, HELDOUT_TEXT

    model, tok = load_model(None)
    calib = calibration_batches(load_text(CALIB_TEXT), tok, 64, 256, 0)
    t = time.perf_counter()
    rep = quantize_model(model, calib, QuantizeConfig(method=args.method, bits=args.bits), device="cpu",
                         progress=False, log=None)
    seconds = time.perf_counter() - t
    digest = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        digest.update(k.encode())
        digest.update(v.contiguous().view(torch.uint8).numpy().tobytes())
    ppl = perplexity(model, eval_token_ids(load_text(HELDOUT_TEXT), tok, 32768), context=512, stride=512)
    print(f"{args.method} {args.bits:g} bits, {args.threads} threads, {torch.backends.cpu.get_cpu_capability()}: "
          f"{rep.bits_per_weight:.4f} bpw, perplexity {ppl.perplexity:.4f}, quantize {seconds:.1f} s, "
          f"state sha256 {digest.hexdigest()[:16]}")


if __name__ == "__main__":
    main()
