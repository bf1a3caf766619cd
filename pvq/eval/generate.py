"""A quick look at what a (quantized) model writes: greedy or seeded sampling, with tokens per second."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..errors import EvalError


class GenerateError(EvalError):
    """Bad generation request: empty prompt, bad length or sampling setting."""


@dataclass
class GenerateConfig:
    max_new_tokens: int = 64
    sample: bool = False  # greedy unless True
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise GenerateError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if not self.sample and (self.temperature != 1.0 or self.top_p != 1.0 or self.top_k != 0):
            raise GenerateError("--temperature, --top-p and --top-k apply to sampling only; add --sample")
        if self.sample:
            if not self.temperature > 0:
                raise GenerateError(f"--temperature must be positive, got {self.temperature}")
            if not 0 < self.top_p <= 1:
                raise GenerateError(f"--top-p must be in (0, 1], got {self.top_p}")
            if self.top_k < 0:
                raise GenerateError(f"--top-k must be 0 (off) or more, got {self.top_k}")


def generate(model, tokenizer, prompt: str, cfg: GenerateConfig | None = None, device: str | None = None) -> dict:
    """Continue ``prompt``; returns the text, token counts, seconds and tokens per second."""
    cfg = cfg or GenerateConfig()
    cfg.check()
    if not prompt:
        raise GenerateError("--prompt is empty; give the text to continue")
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    ids = enc["input_ids"]
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and ids.shape[1] + cfg.max_new_tokens > limit:
        raise GenerateError(
            f"prompt ({ids.shape[1]} tokens) plus --max-new-tokens {cfg.max_new_tokens} exceeds the model's "
            f"{limit} positions; shorten the prompt or lower --max-new-tokens"
        )
    if device is not None:
        model.to(device)
    dev = next(model.parameters()).device
    kwargs = dict(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.sample)
    if cfg.sample:
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
    else:  # the model's generation_config may ask for sampling; greedy means greedy
        kwargs.update(temperature=None, top_p=None, top_k=None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(cfg.seed)
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids.to(dev), attention_mask=enc["attention_mask"].to(dev), pad_token_id=pad, **kwargs
        )
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t
    new = out[0, ids.shape[1]:].tolist()
    return {
        "prompt": prompt,
        "completion": tokenizer.decode(new, skip_special_tokens=True),
        "prompt_tokens": int(ids.shape[1]),
        "new_tokens": len(new),
        "seconds": seconds,
        "tokens_per_second": len(new) / seconds if seconds > 0 else float("inf"),
        "greedy": not cfg.sample,
        "seed": cfg.seed if cfg.sample else None,
    }


def run_generate(model_or_dir: str | None, prompt: str, cfg: GenerateConfig | None = None,
                 device: str | None = None, backend: str | None = None) -> dict:
    """Load a model or pvq checkpoint (with its quantized modules) and continue ``prompt``."""
    from ..models.reference import resolve_model
    from .runs import load_model

    cfg = cfg or GenerateConfig()
    cfg.check()
    if not prompt:
        raise GenerateError("--prompt is empty; give the text to continue")
    model, tokenizer = load_model(model_or_dir, backend=backend)
    out = generate(model, tokenizer, prompt, cfg, device=device)
    out["model"] = resolve_model(model_or_dir)
    return out


__all__ = ["GenerateConfig", "GenerateError", "generate", "run_generate"]
