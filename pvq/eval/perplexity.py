"""Perplexity of a causal LM over a token stream, with a fixed context and stride.

The windows follow the Hugging Face definition ("Perplexity of fixed-length
models"): windows of ``context`` tokens start every ``stride`` tokens; in each
window only the tokens not scored by an earlier window are scored, each
conditioned on the earlier tokens of its window. The first token of the
stream is never scored. With ``stride == context`` the windows are disjoint
and every token but each window's first is scored.

``perplexity = exp(total NLL / scored tokens)`` (natural log).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from pvq.errors import EvalError

__all__ = ["PerplexityError", "PerplexityResult", "check_windows", "perplexity", "perplexity_reference",
           "perplexity_stepwise", "windows"]


class PerplexityError(EvalError):
    """Bad perplexity input; the message says what to change."""


@dataclass
class PerplexityResult:
    perplexity: float
    tokens: int  # scored tokens
    seconds: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    context: int
    stride: int

    def to_dict(self) -> dict:
        return asdict(self)


def windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """``(start, end, first)`` of each window over ``n`` tokens: tokens ``[start, end)``
    are fed, positions ``first..end-start-1`` of the window are scored."""
    jobs = []
    prev_end = 0
    for start in range(0, max(n - 1, 0), stride):
        end = min(start + context, n)
        first = max(prev_end - start, 1)
        if first < end - start:
            jobs.append((start, end, first))
        prev_end = end
        if end == n:
            break
    return jobs


def _ids(data, tokenizer) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        if data.is_floating_point() or data.dim() not in (1, 2) or (data.dim() == 2 and data.shape[0] != 1):
            raise PerplexityError(f"token ids must be a 1-D integer tensor, got {data.dtype} {tuple(data.shape)}")
        return data.reshape(-1).long()
    if isinstance(data, str):
        if tokenizer is None:
            raise PerplexityError("pass a tokenizer with text (or pass token ids)")
        from pvq.models.calibration import tokenize_text

        return tokenize_text(data, tokenizer)
    raise PerplexityError(f"data must be token ids (1-D LongTensor) or a str, got {type(data).__name__}")


def check_windows(context: int, stride: int, batch_size: int = 1) -> None:
    """Refuse a context, stride or batch size that cannot score (stride in [1, context])."""
    for name, v, low in (("context", context, 2), ("stride", stride, 1), ("batch_size", batch_size, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise PerplexityError(f"{name} must be an integer >= {low}, got {v!r}")
    if stride > context:
        raise PerplexityError(f"stride={stride} is longer than context={context}: tokens between windows would "
                              "never be scored; use a stride <= the context")


def _check(ids: torch.Tensor, context: int, stride: int, batch_size: int) -> None:
    check_windows(context, stride, batch_size)
    if ids.numel() < 2:
        raise PerplexityError(f"need at least 2 tokens to score, got {ids.numel()}; use a longer text")


def _model_device(model) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@torch.no_grad()
def perplexity(
    model,
    data,
    tokenizer=None,
    *,
    context: int = 512,
    stride: int = 512,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> PerplexityResult:
    """Perplexity of ``model`` on ``data`` (token ids ``[T]``, or text with ``tokenizer``).

    model: called as ``model(input_ids=x).logits`` with ``x: [B, L]``.
    device: where to run (the model is moved there); default the model's device.
    Windows of equal length are batched ``batch_size`` at a time.
    """
    t0 = time.perf_counter()
    ids = _ids(data, tokenizer)
    _check(ids, context, stride, batch_size)
    if device is not None:
        model.to(device)
    dev = torch.device(device) if device is not None else _model_device(model)
    jobs = windows(ids.numel(), context, stride)
    full = [j for j in jobs if j[1] - j[0] == context]
    rest = [j for j in jobs if j[1] - j[0] != context]
    groups = [full[i : i + batch_size] for i in range(0, len(full), batch_size)] + [[j] for j in rest]
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(groups), desc="perplexity", unit="batch", leave=False)
    total, count = 0.0, 0
    try:
        for group in groups:
            x = torch.stack([ids[s:e] for s, e, _ in group]).to(dev)
            logits = model(input_ids=x).logits
            nll = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none"
            ).view(x.shape[0], -1)  # nll[:, t] scores x[:, t + 1]
            for row, (_, _, first) in enumerate(group):
                scored = nll[row, first - 1 :]
                total += float(scored.double().sum())
                count += scored.numel()
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if was_training and hasattr(model, "train"):
            model.train(True)
    mean = total / count
    return PerplexityResult(math.exp(mean), count, time.perf_counter() - t0, mean, context, stride)


@torch.no_grad()
def perplexity_reference(model, ids: torch.Tensor, context: int = 512, stride: int = 512) -> float:
    """Plain reference: the Hugging Face loop, one window at a time, labels masked with -100
    and the model's own loss (mean over the window's scored tokens) weighted by their count."""
    ids = ids.reshape(1, -1).long()
    n = ids.shape[1]
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    dev = _model_device(model)
    for begin in range(0, n, stride):
        end = min(begin + context, n)
        trg_len = end - prev_end
        x = ids[:, begin:end].to(dev)
        y = x.clone()
        y[:, :-trg_len] = -100
        valid = int((y[:, 1:] != -100).sum())
        if valid > 0:
            loss = model(input_ids=x, labels=y).loss
            nll_sum += float(loss) * valid
            n_tokens += valid
        prev_end = end
        if end == n:
            break
    return math.exp(nll_sum / n_tokens)


@torch.no_grad()
def perplexity_stepwise(model, ids: torch.Tensor, rows: int = 1, device: torch.device | str | None = None,
                        static: bool | None = None) -> PerplexityResult:
    """Perplexity scored as generation runs: ``ids`` cut into ``rows`` equal sequences decoded side by
    side one token a step through the KV cache, so every linear layer sees ``rows`` input rows a call
    (the path of generation, not the 512-token windows of :func:`perplexity`). ``static`` (default: on
    CUDA): the path ``pvq generate`` takes there, a static cache and the decode step replayed from a
    CUDA graph (:mod:`pvq.eval.decoding`); else ``model.generate``'s growing cache. Each sequence's
    tokens but its first are scored. ``context``/``stride`` of the result: the sequence length, 1."""
    ids = ids.reshape(-1).long()
    if rows < 1:
        raise PerplexityError(f"perplexity_stepwise needs rows >= 1, got {rows}")
    n = ids.numel() // rows
    if n < 2:
        raise PerplexityError(f"perplexity_stepwise needs at least 2 tokens a row: {ids.numel()} tokens, rows={rows}")
    t0 = time.perf_counter()
    dev = torch.device(device) if device is not None else _model_device(model)
    x = ids[: n * rows].view(rows, n).to(dev)
    total = 0.0

    def score(logits: torch.Tensor, t: int) -> float:
        return float(F.cross_entropy(logits.float(), x[:, t + 1], reduction="sum").double())

    if dev.type == "cuda" if static is None else static:
        from .decoding import StaticDecoder

        dec = StaticDecoder(model, rows, n)
        dec.capture(x[:, :1])
        total += score(dec.prefill(x[:, :1]), 0)
        for t in range(1, n - 1):
            total += score(dec.step(x[:, t]), t)
    else:
        from .decoding import cache_keyword

        past, kw = None, cache_keyword(model)
        for t in range(n - 1):
            out = model(input_ids=x[:, t : t + 1], use_cache=True, **{kw: past})
            past = getattr(out, kw)
            total += score(out.logits[:, -1], t)
    count = rows * (n - 1)
    return PerplexityResult(math.exp(total / count), count, time.perf_counter() - t0, total / count, n, 1)
