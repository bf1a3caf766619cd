"""Our GPTQ beside llm-compressor's on the same windows, and the ablation of their differences.

The reference model, the same 64 calibration windows of 256 tokens (``calibration_batches``,
seed 0), group size 128 (129 for down_proj: 1032 inputs), asymmetric min/max grid, damping
0.01; perplexity on the first ``--eval-tokens`` held-out tokens (context 512).

Rows (``--rows``, comma-separated):

* ``peer`` / ``peer-act``: llm-compressor's ``GPTQModifier`` through ``oneshot`` (its sequential
  pipeline: all Hessians of a decoder layer collected, then its linears quantized; fp32
  scales from the original weights), act-order off / ``static`` (its default: groups from the
  original columns, sweep by decreasing Hessian diagonal). Needs ``llmcompressor==0.14.0.1``
  (installed with ``--no-deps``; see the README section).
* ``ours-dynamic``: ``pvq`` gptq with each group's scale and zero from the error-updated weights
  as the sweep reaches it (the solver before this benchmark), stage by stage.
* ``ours-static``: + group parameters fixed from the original weights before the sweep.
* ``ours-dynamic-allhess`` / ``ours-static-allhess``: all seven Hessians of a block collected
  before quantizing any of its linears (``sequential=False``), as the peer does.
* ``ours-act``: act-order (static groups), stage by stage; ``ours-act-allhess``.

``--layer`` instead runs the float32-scale ablation on one block's Hessians (no perplexity):
the summed relative proxy loss ``tr(E H E^T) / tr(W H W^T)`` of every linear of block
``--block`` with fp16-exact scales (ours) and with float32 scales (the peer's).

    nice -n 10 .venv/bin/python benchmarks/gptq_peer.py --bits 2,3,4 --rows peer,ours-dynamic,ours-static
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pvq.eval.perplexity import perplexity
from pvq.eval.runs import eval_token_ids, linear_weight_bits, load_model
from pvq.models import QuantizeConfig, calibration_batches, load_text, quantize_model
from pvq.models.reference import CALIB_TEXT, HELDOUT_TEXT

OURS = {
    # row: QuantizeConfig overrides
    "ours-dynamic": dict(static_groups=False, act_order=False, sequential=True),
    "ours-static": dict(static_groups=True, act_order=False, sequential=True),
    "ours-dynamic-allhess": dict(static_groups=False, act_order=False, sequential=False),
    "ours-static-allhess": dict(static_groups=True, act_order=False, sequential=False),
    "ours-act": dict(act_order=True, sequential=True),
    "ours-act-allhess": dict(act_order=True, sequential=False),
}
PEER = {"peer": None, "peer-act": "static"}


def run_peer(model, calib: torch.Tensor, bits: int, actorder: str | None) -> None:
    """llm-compressor 0.14's GPTQ on ``model`` in place (fake-quantized weights)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier

    def args(group):
        return QuantizationArgs(num_bits=bits, type="int", symmetric=False, strategy="group", group_size=group,
                                actorder=actorder)

    groups = {
        "down": QuantizationScheme(targets=["re:.*down_proj$"], weights=args(129)),
        "rest": QuantizationScheme(targets=["re:.*(q|k|v|o|gate|up)_proj$"], weights=args(128)),
    }
    recipe = GPTQModifier(config_groups=groups, ignore=["lm_head"], dampening_frac=0.01, actorder=actorder)
    ds = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": torch.ones_like(calib).tolist()})
    oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=calib.shape[0],
            max_seq_length=calib.shape[1], shuffle_calibration_samples=False, pipeline="sequential")


def peer_bits(model, bits: int) -> float:
    """The peer's storage as a formula (its checkpoint is not ours to measure): b-bit codes,
    an fp32 scale and a b-bit zero point per group of each quantized linear."""
    total = weights = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and name.endswith("_proj"):
            n = m.weight.numel()
            g = 129 if name.endswith("down_proj") else 128
            total += n * bits + (n // g) * (32 + bits)
            weights += n
    return total / weights


def layer_ablation(model0, calib, bits_list, block: int) -> list[dict]:
    """fp16-exact against float32 scales on block ``block``'s Hessians (fp model inputs)."""
    from unittest import mock

    import pvq.codecs.scalar as scalar
    import pvq.solvers.ldlq as ldlq
    from pvq.models.capture import capture_block_inputs, collect_hessians  # noqa: F401
    from pvq.solvers import SolverConfig, quantize_linear

    hs: dict[str, torch.Tensor] = {}
    layer = model0.model.layers[block]
    hooks = []
    for name, m in layer.named_modules():
        if isinstance(m, torch.nn.Linear):
            def hook(mod, inp, out, name=name):
                x = inp[0].reshape(-1, inp[0].shape[-1]).double()
                hs[name] = hs.get(name, 0) + x.T @ x
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        for i in range(0, calib.shape[0], 8):
            model0(input_ids=calib[i : i + 8])
    for h in hooks:
        h.remove()
    rows = []
    for bits in bits_list:
        for label, patch in (("fp16 scales", False), ("fp32 scales", True)):
            for static in (False, True):
                tot = ref = 0.0
                for name, m in layer.named_modules():
                    if not isinstance(m, torch.nn.Linear):
                        continue
                    cfg = QuantizeConfig(method="gptq", bits=bits)
                    g = 129 if name.endswith("down_proj") else 128
                    codec = cfg.make_codec(1, g)
                    ident = (lambda t: t.float())
                    ctx = [mock.patch.object(scalar, "fp16_exact", ident), mock.patch.object(ldlq, "fp16_exact", ident)]
                    if patch:
                        for c in ctx:
                            c.start()
                    try:
                        res = quantize_linear(m.weight.data, hs[name], codec, None,
                                              SolverConfig(hessian_gain=False, static_groups=static))
                    finally:
                        if patch:
                            for c in ctx:
                                c.stop()
                    tot += res.proxy_loss
                    ref += res.proxy_loss / max(res.relative_error, 1e-30)
                row = {"bits": bits, "scales": label, "static_groups": static, "block": block,
                       "relative_proxy_loss": tot / ref}
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bits", default="2,3,4")
    p.add_argument("--rows", default="peer,ours-dynamic,ours-static,ours-static-allhess,peer-act,ours-act")
    p.add_argument("--eval-tokens", type=int, default=32768)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: tiny ops spin badly on a shared machine)")
    p.add_argument("--layer", action="store_true", help="the float32-scale ablation on one block's Hessians")
    p.add_argument("--block", type=int, default=3)
    p.add_argument("--json", default=None, help="write the rows to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bits_list = [int(b) for b in args.bits.split(",")]
    rows = args.rows.split(",")
    for r in rows:
        if r not in OURS and r not in PEER:
            raise SystemExit(f"unknown row {r!r}; choose from {list(OURS) + list(PEER)}")

    model0, tok = load_model(None)
    state = {k: v.clone() for k, v in model0.state_dict().items()}
    calib = calibration_batches(load_text(CALIB_TEXT), tok, args.samples, args.seq_len, 0)
    if args.layer:
        out = layer_ablation(model0, calib, bits_list, args.block)
        if args.json:
            json.dump(out, open(args.json, "w"), indent=1)
        return
    ids = eval_token_ids(load_text(HELDOUT_TEXT), tok, args.eval_tokens)
    base = perplexity(model0, ids, context=512, stride=512).perplexity
    print(f"fp32 perplexity {base:.3f} on {ids.numel()} tokens", flush=True)
    print(f"{'row':<22} {'bits':>4} {'b/w':>7} {'perplexity':>10} {'seconds':>8}", flush=True)
    results = []
    for bits in bits_list:
        for r in rows:
            model, _ = load_model(None)
            model.load_state_dict(state)
            t0 = time.perf_counter()
            if r in PEER:
                run_peer(model, calib, bits, PEER[r])
                bpw = peer_bits(model, bits)
            else:
                cfg = QuantizeConfig(method="gptq", bits=bits, n_samples=args.samples, seq_len=args.seq_len, **OURS[r])
                quantize_model(model, calib, cfg)
                bpw = linear_weight_bits(model)
            secs = time.perf_counter() - t0
            ppl = perplexity(model, ids, context=512, stride=512).perplexity
            row = {"row": r, "bits": bits, "bits_per_weight": bpw, "perplexity": ppl, "seconds": secs}
            results.append(row)
            print(f"{r:<22} {bits:>4} {bpw:>7.3f} {ppl:>10.3f} {secs:>8.1f}", flush=True)
    if args.json:
        json.dump({"fp32": base, "rows": results}, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
