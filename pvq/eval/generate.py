"""A quick look at what a (quantized) model writes: greedy or seeded sampling, with tokens per second.

Two paths, one result: ``model.generate`` (``decode="eager"``: a growing cache, one Python-driven
forward per token) and :mod:`pvq.eval.decoding` (``decode="static"``: a static KV cache, the decode
step replayed from a CUDA graph on CUDA devices; with ``compile`` that step compiled by ``torch.compile``).
``decode="auto"`` takes the static path on CUDA (or with ``compile``) and the eager one elsewhere. Greedy
tokens are the same either way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..errors import EvalError


class GenerateError(EvalError):
    """Bad generation request: empty prompt, bad length or sampling setting."""


DECODE_PATHS = ("auto", "eager", "static")


@dataclass
class GenerateConfig:
    max_new_tokens: int = 64
    sample: bool = False  # greedy unless True
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    decode: str = "auto"  # "auto" (static on CUDA, eager elsewhere), "eager" (model.generate) or "static"
    compile: bool = False  # torch.compile the static path's decode step (auto then takes the static path everywhere)

    def check(self) -> None:
        if self.decode not in DECODE_PATHS:
            raise GenerateError(f"--decode must be one of {', '.join(DECODE_PATHS)}, got {self.decode!r}")
        if self.compile and self.decode == "eager":
            raise GenerateError("--compile compiles the static path's decode step; drop --decode eager")
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
    """Continue ``prompt``; returns the text, token counts, seconds, tokens per second and what the model holds on
    its device (``memory``: :func:`~pvq.eval.runs.quantized_memory`)."""
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
    path = cfg.decode if cfg.decode != "auto" else ("static" if dev.type == "cuda" or cfg.compile else "eager")
    torch.manual_seed(cfg.seed)
    extra = {}
    if path == "static":
        new, seconds, extra = _static(model, ids.to(dev), cfg, pad)
    else:
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                input_ids=ids.to(dev), attention_mask=enc["attention_mask"].to(dev), pad_token_id=pad, **kwargs
            )
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - t
        new = out[0, ids.shape[1]:].tolist()
    from .runs import quantized_memory

    return {
        "prompt": prompt,
        "completion": tokenizer.decode(new, skip_special_tokens=True),
        "prompt_tokens": int(ids.shape[1]),
        "new_tokens": len(new),
        "seconds": seconds,
        "tokens_per_second": len(new) / seconds if seconds > 0 else float("inf"),
        "greedy": not cfg.sample,
        "seed": cfg.seed if cfg.sample else None,
        "decode": path,
        "device": str(dev),
        "memory": quantized_memory(model, dev),  # on the device the model ran on
        **extra,
    }


def _static(model, ids: torch.Tensor, cfg: GenerateConfig, pad: int) -> tuple[list[int], float, dict]:
    """(new tokens, seconds of prefill and decode, details) through the static cache and graph path."""
    from .decoding import StaticDecoder, decode, greedy, sampler

    gen = model.generation_config
    eos = gen.eos_token_id if gen is not None else None
    select = sampler(cfg.temperature, cfg.top_k, cfg.top_p) if cfg.sample else greedy
    dec = StaticDecoder(model, batch=1, max_len=ids.shape[1] + cfg.max_new_tokens, compile=cfg.compile)
    run = decode(dec, ids, cfg.max_new_tokens, select, eos=eos, pad=pad)
    tokens = run.tokens[0].tolist()
    if eos is not None:  # as generate: stop after the first end-of-sequence token
        ends = {eos} if isinstance(eos, int) else set(eos)
        cut = next((i + 1 for i, t in enumerate(tokens) if t in ends), len(tokens))
        tokens = tokens[:cut]
    return tokens, run.seconds, {"mode": run.mode, "setup_seconds": run.setup_seconds,
                                 "prefill_seconds": run.prefill_seconds,  # the time to the first token
                                 "decode_tokens_per_second": run.tokens_per_second}


def run_generate(model_or_dir: str | None, prompt: str, cfg: GenerateConfig | None = None,
                 device: str | None = None, backend: str | None = None, merge: bool | None = None) -> dict:
    """Load a model or pvq checkpoint (with its quantized modules) and continue ``prompt``. ``merge``: run
    each block's q/k/v and gate/up as one product each where they can and hand each gated MLP's activation to its
    quantized down_proj (:func:`~pvq.models.merging.fuse_for_decoding`); what they did is in ``"merged"``. None
    (default): where the model runs on CUDA (7B-shaped Llama, H200: 196 -> 214 tokens/s at 3 bits, docs/kernels.md
    session 18); the CPU keeps the modules as loaded."""
    from ..models.merging import fuse_for_decoding
    from ..models.reference import resolve_model
    from .runs import load_model

    cfg = cfg or GenerateConfig()
    cfg.check()
    if not prompt:
        raise GenerateError("--prompt is empty; give the text to continue")
    model, tokenizer = load_model(model_or_dir, backend=backend)
    if merge is None:
        runs_on = torch.device(device) if device is not None else next(model.parameters()).device
        merge = runs_on.type == "cuda"
    merged = fuse_for_decoding(model) if merge else None
    out = generate(model, tokenizer, prompt, cfg, device=device)
    out["model"] = resolve_model(model_or_dir)
    if merged is not None:
        out["merged"] = merged
    return out


__all__ = ["DECODE_PATHS", "GenerateConfig", "GenerateError", "generate", "run_generate"]
