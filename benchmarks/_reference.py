"""What the reference-model benchmarks share: the demo's settings, the model, its calibration and held-out tokens."""

from __future__ import annotations

from pvq.eval.runs import DemoConfig, eval_token_ids, load_model
from pvq.models import calibration_batches, load_text
from pvq.models.reference import CALIB_TEXT, HELDOUT_TEXT


def reference_inputs(eval_tokens: int | None = None, calib_text: str | None = None):
    """``(demo, model, tokenizer, calibration ids, held-out ids)``: the demo's settings (64 calibration windows
    of 256 tokens of ``calib_text``, default calib.txt, seed 0; the first ``eval_tokens`` held-out tokens, default
    32,768) and the reference model, loaded."""
    demo = DemoConfig(plot=None, zeroshot_limit=0)
    model, tok = load_model(None)
    calib = calibration_batches(load_text(calib_text or CALIB_TEXT), tok, demo.n_samples, demo.seq_len, demo.seed)
    ids = eval_token_ids(load_text(HELDOUT_TEXT), tok, eval_tokens or demo.eval_tokens)
    return demo, model, tok, calib, ids
