#!/usr/bin/env python3
"""Train pvq's embedded reference model (a small Llama) on the stdlib corpus.

Reads the uint16 token streams written by ``scripts/build_corpus.py``
(``<data-dir>/train.npy``, ``val.npy``, ``heldout.npy``), trains a
``transformers.LlamaForCausalLM`` with a plain PyTorch loop (AdamW, linear
warmup + cosine decay, gradient clipping, bf16 autocast on GPU, training-only
dropout on the blocks' attention/MLP outputs, random windows of
``--seq-len + 1`` tokens drawn with a seeded generator), evaluates
validation loss and held-out perplexity every ``--eval-every`` steps, keeps
the checkpoint with the lowest validation loss, and saves it in fp16 with
``save_pretrained(..., safe_serialization=True)`` next to the tokenizer files.

Examples (from the repository root)::

    # smoke test on CPU
    python scripts/train_reference.py --max-steps 2 --device cpu --out /tmp/ref
    # the real run (GPU; the defaults are the shipped model's settings)
    python scripts/train_reference.py --device cuda --compile --out OUT_DIR
    # held-out perplexity of a saved model, float32 on CPU
    python scripts/train_reference.py --eval-only pvq/assets/reference --device cpu
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO / ".data" / "reference" / "tokens"
ASSET_DIR = REPO / "pvq" / "assets" / "reference"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# The reference architecture (see the model card for the reasoning).
MODEL_SHAPE = dict(
    vocab_size=8192,
    hidden_size=384,
    intermediate_size=1032,  # 2^3 * 3 * 43, not a power of two (like 11008 = 2^8 * 43)
    num_hidden_layers=8,
    num_attention_heads=6,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=1024,
)


def build_config():
    """The LlamaConfig of the reference model."""
    from transformers import LlamaConfig

    config = LlamaConfig(
        **MODEL_SHAPE,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        initializer_range=0.02,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
        use_cache=True,
    )
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if theta != 10000.0:
        raise SystemExit(f"rope_theta did not reach the config (got {theta}); check the transformers version")
    return config


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, context: int = 512, stride: int = 512,
               batch_size: int = 16, autocast_dtype: torch.dtype | None = None) -> tuple[float, int]:
    """Perplexity of ``ids`` (1-D LongTensor) with windows of ``context`` tokens
    starting every ``stride`` tokens.

    In each window only tokens not scored by an earlier window are scored,
    each conditioned on the window's earlier tokens (with stride == context
    the windows are disjoint and every token but each window's first is
    scored). Returns (exp(mean NLL), number of scored tokens).
    """
    device = next(model.parameters()).device
    n = ids.numel()
    jobs = []  # (start, end, first scored position within the window)
    prev_end = 0
    for start in range(0, n - 1, stride):
        end = min(start + context, n)
        first = max(prev_end - start, 1)
        if first < end - start:
            jobs.append((start, end, first))
        prev_end = end
        if end == n:
            break
    total_nll, total_count = 0.0, 0
    full = [j for j in jobs if j[1] - j[0] == context]
    partial = [j for j in jobs if j[1] - j[0] != context]
    groups = [full[i:i + batch_size] for i in range(0, len(full), batch_size)] + [[j] for j in partial]
    was_training = model.training
    model.eval()
    for group in groups:
        x = torch.stack([ids[s:e] for s, e, _ in group]).to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(input_ids=x).logits
        logp = F.log_softmax(logits.float(), dim=-1)
        nll = -logp[:, :-1].gather(-1, x[:, 1:, None]).squeeze(-1)  # [b, L-1]; nll[:, t] scores x[:, t+1]
        for row, (_, _, first) in enumerate(group):
            scored = nll[row, first - 1:]
            total_nll += float(scored.double().sum())
            total_count += scored.numel()
    model.train(was_training)
    return math.exp(total_nll / total_count), total_count


def add_residual_dropout(model, p: float) -> list:
    """Dropout on each block's attention and MLP outputs, in training mode only.

    Implemented with forward hooks, so the saved architecture and config stay
    plain Llama (dropout has no weights). Returns the hook handles.
    """
    def attn_hook(module, inputs, output):
        if isinstance(output, tuple):
            return (F.dropout(output[0], p, module.training),) + tuple(output[1:])
        return F.dropout(output, p, module.training)

    def mlp_hook(module, inputs, output):
        return F.dropout(output, p, module.training)

    handles = []
    for layer in model.model.layers:
        handles.append(layer.self_attn.register_forward_hook(attn_hook))
        handles.append(layer.mlp.register_forward_hook(mlp_hook))
    return handles


def load_tokens(path: Path) -> torch.Tensor:
    arr = np.load(path)
    if arr.dtype != np.uint16:
        raise SystemExit(f"{path}: expected uint16 tokens, got {arr.dtype}")
    return torch.from_numpy(arr.astype(np.int64))


def lr_at(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup to ``peak`` then cosine decay to ``min_ratio * peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()})"


def eval_only(args) -> int:
    """Held-out perplexity of a saved model dir, float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(args.device)
    tok = AutoTokenizer.from_pretrained(args.eval_only)
    text = Path(args.eval_text or Path(args.eval_only) / "heldout.txt").read_text()
    ids = torch.tensor(tok(text, add_special_tokens=False).input_ids, dtype=torch.long)
    if args.eval_max_tokens:
        ids = ids[:args.eval_max_tokens]
    model = AutoModelForCausalLM.from_pretrained(args.eval_only, dtype=torch.float32).to(device)
    torch.set_num_threads(args.threads) if args.threads else None
    t0 = time.time()
    ppl, count = perplexity(model, ids, args.context, args.stride, batch_size=args.eval_batch)
    result = {"model": str(args.eval_only), "tokens": ids.numel(), "scored_tokens": count,
              "context": args.context, "stride": args.stride, "dtype": "float32",
              "device": hardware(device), "perplexity": ppl, "seconds": round(time.time() - t0, 1),
              "torch": torch.__version__}
    import transformers
    result["transformers"] = transformers.__version__
    print(json.dumps(result, indent=1))
    return 0


def train(args) -> int:
    from transformers import LlamaForCausalLM

    import transformers

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    torch.manual_seed(args.seed)
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.threads:
        torch.set_num_threads(args.threads)
    batch_size = args.batch_size or (64 if on_gpu else 2)
    eval_max = args.eval_max_tokens if args.eval_max_tokens is not None else (None if on_gpu else 4096)
    amp_dtype = torch.bfloat16 if on_gpu else None

    data_dir = Path(args.data_dir)
    train_ids = load_tokens(data_dir / "train.npy")
    val_ids = load_tokens(data_dir / "val.npy")
    heldout_ids = load_tokens(data_dir / "heldout.npy")
    if eval_max:
        val_ids, heldout_ids = val_ids[:eval_max], heldout_ids[:eval_max]
    train_dev = train_ids.to(device)
    n_train = train_ids.numel()
    tokens_per_step = batch_size * args.seq_len
    print(f"[data] train {n_train:,} tokens, val {val_ids.numel():,}, heldout {heldout_ids.numel():,}; "
          f"{tokens_per_step:,} tokens/step, {args.max_steps} steps = "
          f"{args.max_steps * tokens_per_step / n_train:.2f} epochs", flush=True)

    config = build_config()
    model = LlamaForCausalLM(config).to(device)
    if args.dropout > 0:
        add_residual_dropout(model, args.dropout)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[model] {n_params:,} parameters (tied embeddings); torch {torch.__version__}, "
          f"transformers {transformers.__version__}, {hardware(device)}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=on_gpu)
    fwd = torch.compile(model) if args.compile else model

    gen = torch.Generator().manual_seed(args.seed)
    offsets = torch.arange(args.seq_len + 1, device=device)
    log = {"args": vars(args) | {"batch_size": batch_size}, "n_params": n_params, "hardware": hardware(device),
           "torch": torch.__version__, "transformers": transformers.__version__,
           "train_tokens": n_train, "tokens_per_step": tokens_per_step, "evals": [], "train_loss": []}
    best = {"val_loss": float("inf"), "step": -1, "state": None}

    def evaluate(step: int) -> None:
        t = time.time()
        val_ppl, _ = perplexity(model, val_ids, args.context, args.stride, args.eval_batch, amp_dtype)
        ho_ppl, _ = perplexity(model, heldout_ids, args.context, args.stride, args.eval_batch, amp_dtype)
        val_loss = math.log(val_ppl)
        entry = {"step": step, "tokens": step * tokens_per_step, "val_loss": val_loss, "val_ppl": val_ppl,
                 "heldout_ppl": ho_ppl, "elapsed_s": round(time.time() - t_start, 1)}
        log["evals"].append(entry)
        mark = ""
        if val_loss < best["val_loss"]:
            best.update(val_loss=val_loss, step=step,
                        state={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
            mark = " *best"
        print(f"[eval] step {step:6d} val loss {val_loss:.4f} ppl {val_ppl:.3f} | heldout ppl {ho_ppl:.3f} "
              f"({time.time() - t:.1f}s){mark}", flush=True)

    model.train()
    t_start = time.time()
    t_log, tok_log = t_start, 0
    for step in range(args.max_steps):
        if step % args.eval_every == 0 and step > 0:
            evaluate(step)
        lr = lr_at(step, args.max_steps, args.lr, args.warmup, args.min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, n_train - args.seq_len - 1, (batch_size,), generator=gen).to(device)
        batch = train_dev[starts[:, None] + offsets]
        x, y = batch[:, :-1], batch[:, 1:]
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = fwd(input_ids=x).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        tok_log += tokens_per_step
        if step % args.log_every == 0 or step == args.max_steps - 1:
            loss_v = float(loss.detach())
            now = time.time()
            rate = tok_log / max(now - t_log, 1e-9)
            t_log, tok_log = now, 0
            log["train_loss"].append([step, loss_v])
            print(f"[train] step {step:6d}/{args.max_steps} loss {loss_v:.4f} lr {lr:.2e} "
                  f"gnorm {float(grad_norm):.2f} {rate / 1e3:.0f}k tok/s {now - t_start:.0f}s", flush=True)
    evaluate(args.max_steps)
    train_s = time.time() - t_start

    model.load_state_dict(best["state"])
    model = model.to(torch.float16)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok_dir = Path(args.tokenizer_dir)
    for name in TOKENIZER_FILES:
        src, dst = tok_dir / name, out / name
        if src.exists() and not (dst.exists() and src.resolve() == dst.resolve()):
            shutil.copyfile(src, dst)
    # Held-out perplexity of the saved fp16 weights, computed in float32.
    model = model.to(torch.float32)
    ho_ids = load_tokens(data_dir / "heldout.npy")
    if eval_max:
        ho_ids = ho_ids[:eval_max]
    ho_ppl, count = perplexity(model, ho_ids, args.context, args.stride, args.eval_batch, None)
    log.update(best_step=best["step"], best_val_loss=best["val_loss"], train_seconds=round(train_s, 1),
               final_heldout_ppl_fp16_weights_fp32=ho_ppl, heldout_scored_tokens=count,
               total_train_tokens=args.max_steps * tokens_per_step)
    (out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"[done] best step {best['step']} (val loss {best['val_loss']:.4f}); training {train_s:.0f}s; "
          f"held-out ppl of the saved fp16 weights in fp32: {ho_ppl:.4f} over {count:,} tokens; saved to {out}",
          flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="dir with train/val/heldout .npy")
    ap.add_argument("--tokenizer-dir", default=str(ASSET_DIR), help="tokenizer files copied next to the model")
    ap.add_argument("--out", default=str(REPO / ".data" / "reference" / "model"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-steps", type=int, default=5874, help="5874 steps x 32768 tokens = 24 epochs")
    ap.add_argument("--batch-size", type=int, default=None, help="sequences per step (default 64 on GPU, 2 on CPU)")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--dropout", type=float, default=0.3,
                    help="training-only dropout on attention and MLP outputs (forward hooks)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    ap.add_argument("--eval-every", type=int, default=293)
    ap.add_argument("--log-every", type=int, default=200)
    ap.add_argument("--eval-batch", type=int, default=16)
    ap.add_argument("--eval-max-tokens", type=int, default=None,
                    help="evaluate on the first N tokens only (default: all on GPU, 4096 on CPU)")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--stride", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--eval-only", default=None, metavar="MODEL_DIR",
                    help="only report the held-out perplexity of a saved model (float32)")
    ap.add_argument("--eval-text", default=None, help="text for --eval-only (default MODEL_DIR/heldout.txt)")
    args = ap.parse_args(argv)
    if args.eval_only:
        return eval_only(args)
    return train(args)


if __name__ == "__main__":
    sys.exit(main())
