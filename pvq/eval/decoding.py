"""Decoding with a static KV cache and one decode step replayed from a CUDA graph.

What gpt-fast and transformers' ``StaticCache`` do: the KV cache is allocated once for the
whole sequence, so a decode step (one token per row at position ``pos``) has the same shapes
and the same tensors every time. On CUDA that step, every layer's kernels included, is
captured once in a CUDA graph and replayed per token: no Python, no launch gaps. Where the
capture fails (an op that syncs with the host, a backend that allocates per call), the
same static-cache step runs eagerly and :attr:`StaticDecoder.mode` says why.

    dec = StaticDecoder(model, batch=1, max_len=prompt + new_tokens)
    run = decode(dec, ids [B, P], new_tokens, select)   # DecodeRun: tokens [B, n], seconds, mode

:func:`decode` feeds the prompt once (prefill), then the chosen token of every row each step
(``select(logits [B, V] float32) -> [B]``: :func:`greedy`, or :func:`sampler` with
transformers' temperature / top-k / top-p warpers in ``generate``'s order), and stops when
every row has produced an end-of-sequence token (finished rows continue with ``pad``, as
``model.generate`` does). Greedy tokens equal ``model.generate``'s (tests/eval/test_decoding.py).
"""

from __future__ import annotations

import inspect
import time
import types
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import EvalError

__all__ = ["DecodeRun", "StaticDecoder", "cache_keyword", "decode", "default_compile_options", "greedy", "sampler"]


class DecodeError(EvalError):
    """A decode request the static cache cannot hold (prompt plus new tokens past its length)."""


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The likeliest token of each row ``[B, V] -> [B]``."""
    return logits.argmax(-1)


def sampler(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
            generator: torch.Generator | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Seeded sampling ``[B, V] -> [B]`` through transformers' warpers (temperature, top-k, top-p: the
    order ``model.generate`` applies them), one ``torch.multinomial`` draw per step."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers = []
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))

    def select(logits: torch.Tensor) -> torch.Tensor:
        for w in warpers:
            logits = w(None, logits)
        return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)

    return select


def cache_keyword(model) -> str:
    """The name ``model.forward`` takes its KV cache by, and its outputs carry it by: ``"cache"`` (transformers
    renamed ``past_key_values``, 5.2x; the old name warns and goes in 5.40) or ``"past_key_values"``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def default_compile_options(device: torch.device, backend: str = "inductor") -> dict:
    """The options :class:`StaticDecoder` compiles its step with: ``{"triton.enable_pdl": True}`` for inductor on a
    CUDA device of compute capability 9 or more whose torch has that option (inductor's kernels, and with them
    pvq's, launched as programmatic dependent launches: the 7B step at 3 bits 344 -> 355 tokens/s, fp16 about 4%
    faster too, on an H100; docs/kernels.md, session 31), else none."""
    if backend != "inductor" or device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 9:
        return {}
    from torch._inductor import config

    return {"triton.enable_pdl": True} if hasattr(config.triton, "enable_pdl") else {}


class StaticDecoder:
    """A model with a static KV cache of ``max_len`` positions for ``batch`` rows and, after
    :meth:`capture`, its decode step (one token per row) in a CUDA graph (``graph``: default on CUDA)
    and, with ``compile``, compiled by ``torch.compile`` (``compile_backend``: ``"inductor"`` fuses the
    norms, rotary embeddings, residual adds and cache writes between the products; every quantized
    product stays one operator, :mod:`pvq.models.compile_ops`; ``compile_options``: the backend's
    options, default :func:`default_compile_options`: inductor's kernels and pvq's as programmatic
    dependent launches on Hopper and later). The prefill (prompts of any length) is eager unless
    ``prefill_bucket``: then each prompt is padded to a multiple of that many positions (at most ``max_len``; the
    padding after the prompt, which causal attention keeps from the prompt's logits and the steps overwrite in the
    cache) and, where a graph is wanted, each padded length's prefill is captured once in a CUDA graph and replayed
    (no host launches: a 7B prefill of 512 tokens at 3 bits is bound by the host otherwise, docs/kernels.md session 32;
    the capture's warm-up and the memory pool, one for all lengths, are the price; :attr:`prefill_mode` says which ran).

    ``prefill(ids [B, P])`` (the cache restarts at position 0) and ``step(tokens [B])`` return float32
    logits ``[B, V]`` of the last position. :attr:`mode`: ``"cuda-graph"``, ``"static"`` (eager steps
    over the static cache) or ``"static (graph capture failed: ...)"``, followed with ``compile`` by
    ``", compiled"`` or ``" (compile failed: ...)"``; :attr:`setup_seconds`: warm-up (kernel builds,
    runtime layouts, compilation) and capture.
    """

    def __init__(self, model, batch: int, max_len: int, graph: bool | None = None, warmup: int = 2,
                 compile: bool = False, compile_backend: str = "inductor",
                 compile_options: dict | None = None, prefill_bucket: int | None = None) -> None:
        from transformers import StaticCache

        self.model, self.batch, self.max_len = model, batch, max_len
        self.device = next(model.parameters()).device
        self.want_graph = self.device.type == "cuda" if graph is None else graph
        if self.want_graph and self.device.type != "cuda":
            raise DecodeError(f"CUDA graphs need a CUDA device; the model is on {self.device}")
        self.want_compile, self.compile_backend = compile, compile_backend
        self.compile_options = (default_compile_options(self.device, compile_backend) if compile_options is None
                                else dict(compile_options))
        if prefill_bucket is not None and prefill_bucket < 1:
            raise DecodeError(f"prefill_bucket pads prompts to a multiple of that many positions: give 1 or more "
                              f"(or None: no padding), not {prefill_bucket}")
        self.prefill_bucket = prefill_bucket
        self._prefill_graphs: dict[int, _PrefillGraph | None] = {}  # padded length -> its graph, None: eager
        self._prefill_pool = None  # one memory pool for all padded lengths (one replays at a time)
        self.prefill_mode = "eager" if prefill_bucket is None else f"eager (padded to multiples of {prefill_bucket})"
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.warmup = warmup
        self._graph_mode = "static"
        self._compile_mode = ""
        self.setup_seconds = 0.0
        self._set_up = False
        self._graph = None
        self._logits = None
        self._step_forward = self._forward  # the compiled step after a successful set-up with compile
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self._cache_kw = cache_keyword(model)
        if prefill_bucket is not None and any(getattr(l, "is_sliding", False) for l in getattr(self.cache, "layers", ())):
            raise DecodeError("prefill_bucket pads the prompt, which a sliding-window cache would keep instead of the "
                              "prompt's first tokens: leave prefill_bucket out for this model")
        self.pos = 0
        self._tok = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        self._cpos = torch.zeros(1, dtype=torch.long, device=self.device)

    @property
    def mode(self) -> str:
        return self._graph_mode + self._compile_mode

    @property
    def captured(self) -> bool:
        return self._graph is not None

    @property
    def needs_setup(self) -> bool:
        """Whether :meth:`capture` has work to do (a graph or a compiled step wanted, not set up yet)."""
        return (self.want_graph or self.want_compile) and not self._set_up

    def _forward(self, ids: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
        # positions given both ways: older transformers place keys by cache_position, newer by the cache's
        # own length and rotate by position_ids
        return self.model(input_ids=ids, position_ids=cache_position.unsqueeze(0).expand(ids.shape[0], -1),
                          cache_position=cache_position, use_cache=True,
                          **{self._cache_kw: self.cache}).logits[:, -1]

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, V]`` float32 after the prompt ``ids [B, P]``, from position 0 of a cleared cache."""
        if ids.shape[0] != self.batch or ids.shape[1] >= self.max_len:
            raise DecodeError(f"prompt of {tuple(ids.shape)} does not fit the cache of {self.batch} rows x "
                              f"{self.max_len} positions")
        self.cache.reset()  # in place: a captured graph keeps reading the same tensors
        p = ids.shape[1]
        if self.prefill_bucket is None:
            logits = self._forward(ids.to(self.device), torch.arange(p, device=self.device))
        else:
            logits = self._padded_prefill(ids.to(self.device))
        self.pos = p
        return logits.to(torch.float32, copy=True)  # a graph's output is overwritten by its next replay

    def padded_length(self, prompt: int) -> int:
        """Positions a prompt of ``prompt`` tokens is padded to (``prefill_bucket``'s next multiple, at most
        ``max_len``)."""
        b = self.prefill_bucket or 1
        return min(-(-prompt // b) * b, self.max_len)

    def _padded_prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """The last prompt position's logits ``[B, V]`` from a forward of the prompt padded to
        :meth:`padded_length`: replayed from that length's CUDA graph where one is wanted and captured, else eager."""
        p = ids.shape[1]
        n = self.padded_length(p)
        graph = self._prefill_graph(n) if self.want_graph else None
        buffers = graph if graph is not None else _PrefillGraph.buffers(self.batch, n, self.device)
        buffers.ids[:, :p].copy_(ids)
        buffers.ids[:, p:].zero_()
        buffers.last.fill_(p - 1)
        buffers.padding.fill_(n - p)
        if graph is None:
            return self._prefill_forward(buffers)
        self.cache.reset()  # the capture's warm-up wrote it
        graph.graph.replay()
        return graph.logits

    def _prefill_forward(self, b: "_PrefillGraph") -> torch.Tensor:
        """Logits ``[B, V]`` at position ``b.last`` of a forward of ``b.ids`` from position 0 (only that position
        through the head where the model keeps chosen logits); then the cache's lengths, where it counts them
        (newer transformers place keys by them), less the padding, so that the first step writes after the prompt."""
        kw = {self._cache_kw: self.cache, "position_ids": b.positions.unsqueeze(0).expand(self.batch, -1),
              "cache_position": b.positions, "use_cache": True}
        if self._keeps_logits:
            logits = self.model(input_ids=b.ids, logits_to_keep=b.last, **kw).logits[:, -1]
        else:
            logits = self.model(input_ids=b.ids, **kw).logits.index_select(1, b.last)[:, 0]
        for layer in getattr(self.cache, "layers", ()):
            length = getattr(layer, "cumulative_length", None)
            if isinstance(length, torch.Tensor):
                length.sub_(b.padding)
        return logits

    def _prefill_graph(self, n: int) -> "_PrefillGraph | None":
        """The CUDA graph of the prefill padded to ``n`` positions, captured on first use (after a warm-up on a side
        stream); None (and :attr:`prefill_mode` says why) where the capture failed: that length runs eagerly."""
        if n in self._prefill_graphs:
            return self._prefill_graphs[n]
        b = _PrefillGraph.buffers(self.batch, n, self.device)

        def from_position_0():  # each from position 0: a second forward after the first would write past n
            self.cache.reset()
            self._prefill_forward(b)

        try:
            self._warm_up(from_position_0, max(self.warmup, 1))
            if self._prefill_pool is None:
                self._prefill_pool = torch.cuda.graph_pool_handle()
            b.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(b.graph, pool=self._prefill_pool):
                b.logits = self._prefill_forward(b)
            torch.cuda.synchronize(self.device)
            self.prefill_mode = f"cuda-graph (padded to multiples of {self.prefill_bucket})"
        except Exception as e:  # noqa: BLE001 - any op that cannot be captured: this length's prefill runs eagerly
            b = None
            self.prefill_mode = f"eager (prefill graph capture failed: {_reason(e)})"
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        self._prefill_graphs[n] = b
        return b

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, V]`` float32 after feeding ``tokens [B]`` at the next position."""
        if self.pos >= self.max_len:
            raise DecodeError(f"the static cache holds {self.max_len} positions; all are used")
        self._tok.copy_(tokens.reshape(self.batch, 1))
        self._cpos.fill_(self.pos)
        if self._graph is not None:
            self._graph.replay()
            logits = self._logits
        else:
            logits = self._step_forward(self._tok, self._cpos)
        self.pos += 1
        return logits.float()

    def _warm_up(self, call=None, times: int | None = None) -> None:
        """Run ``call`` (default: the step) ``times`` times (default ``warmup``), on a side stream where a graph is
        wanted, as its capture asks."""
        call = call or (lambda: self._step_forward(self._tok, self._cpos))
        times = self.warmup if times is None else times
        if not self.want_graph:
            for _ in range(times):
                call()
            return
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(times):
                call()
        torch.cuda.current_stream(self.device).wait_stream(side)

    def _compile_step(self) -> None:
        """Compile the step (quantized layers as one operator each) and warm it up; on failure the eager
        step stays and :attr:`mode` says why."""
        from ..models import prepare_for_compile

        try:
            # pvq's kernels launch programmatically where inductor's do: each then starts while the one before
            # it finishes (docs/kernels.md, session 31)
            prepare_for_compile(self.model, programmatic_launch=bool(self.compile_options.get("triton.enable_pdl")))
            self._step_forward = torch.compile(_own_code(self._forward), backend=self.compile_backend,
                                               fullgraph=True, dynamic=False, options=self.compile_options or None)
            self._warm_up()
            self._compile_mode = ", compiled"
        except Exception as e:  # noqa: BLE001 - whatever the compiler refuses: the eager step runs
            self._step_forward = self._forward
            self._compile_mode = f" (compile failed: {_reason(e)})"
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def capture(self, ids: torch.Tensor) -> None:
        """Set the decode step up after the prompt ``ids [B, P]``: compile it (where ``compile``), warm it up and
        capture it (where ``graph``), then clear the cache. A failed compilation leaves the eager step, a failed
        capture steps without a graph over the same cache (:attr:`mode` says why)."""
        if not self.needs_setup:
            return
        t0 = time.perf_counter()
        self.prefill(ids)
        self._tok.zero_()
        self._cpos.fill_(self.pos)
        if self.want_compile:
            self._compile_step()
        if self.want_graph:
            self._capture_graph()
        self._set_up = True
        self.cache.reset()
        self.pos = 0
        self.setup_seconds += time.perf_counter() - t0

    def _capture_graph(self) -> None:
        try:
            self._warm_up()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._logits = self._step_forward(self._tok, self._cpos)
            torch.cuda.synchronize(self.device)
            self._graph, self._graph_mode = graph, "cuda-graph"
        except Exception as e:  # noqa: BLE001 - any op that cannot be captured: run the same step eagerly
            self._graph, self._logits = None, None
            self._graph_mode = f"static (graph capture failed: {_reason(e)})"
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)


@dataclass
class _PrefillGraph:
    """A padded prefill's fixed tensors: prompt ids ``[B, n]`` (zeros after the prompt), positions ``0 .. n - 1``,
    the last prompt position ``[1]``, the padding's length ``[]``; once captured its graph and output logits
    ``[B, V]``."""

    ids: torch.Tensor
    positions: torch.Tensor
    last: torch.Tensor
    padding: torch.Tensor
    graph: object = None
    logits: torch.Tensor | None = None

    @classmethod
    def buffers(cls, batch: int, n: int, device: torch.device) -> "_PrefillGraph":
        return cls(torch.zeros(batch, n, dtype=torch.long, device=device), torch.arange(n, device=device),
                   torch.zeros(1, dtype=torch.long, device=device), torch.zeros((), dtype=torch.long, device=device))


def _own_code(method):
    """``method`` bound to a copy of its code object. Dynamo keeps compiled graphs per code object (at most
    ``recompile_limit`` of them): each decoder's step gets its own, freed with it, so the ninth decoder of a
    process compiles as the first did."""
    fn = method.__func__
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return types.MethodType(copy, method.__self__)


def _reason(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


@dataclass
class DecodeRun:
    """Tokens ``[B, n]`` (n <= new_tokens: all rows ended), prefill and decode seconds (after setup),
    the decoder's mode, setup seconds (warm-up, kernel builds, capture) and how its prefill ran."""

    tokens: torch.Tensor
    prefill_seconds: float
    decode_seconds: float
    mode: str
    setup_seconds: float
    prefill_mode: str = "eager"

    @property
    def seconds(self) -> float:
        return self.prefill_seconds + self.decode_seconds

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens of all rows per second of decode steps (the prefill excluded)."""
        steps = max(self.tokens.shape[1] - 1, 0)
        return self.tokens.shape[0] * steps / self.decode_seconds if self.decode_seconds > 0 else float("inf")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def decode(dec: StaticDecoder, ids: torch.Tensor, new_tokens: int,
           select: Callable[[torch.Tensor], torch.Tensor] = greedy, eos: int | list[int] | None = None,
           pad: int = 0, warm: bool = True) -> DecodeRun:
    """Generate up to ``new_tokens`` tokens per row after ``ids [B, P]`` (see the module docstring).
    ``warm``: compile and capture the step (where the decoder wants them) before the clock starts."""
    if new_tokens < 1:
        raise DecodeError(f"new_tokens must be at least 1, got {new_tokens}")
    if ids.shape[1] + new_tokens > dec.max_len:
        raise DecodeError(f"prompt ({ids.shape[1]}) plus {new_tokens} new tokens exceed the cache's {dec.max_len}")
    device = dec.device
    if warm and dec.needs_setup:
        dec.capture(ids)
    eos_ids = torch.tensor([] if eos is None else [eos] if isinstance(eos, int) else list(eos), device=device)
    _sync(device)
    t0 = time.perf_counter()
    tok = select(dec.prefill(ids))
    _sync(device)
    t1 = time.perf_counter()
    out = [tok]
    done = torch.isin(tok, eos_ids)
    for _ in range(new_tokens - 1):
        if eos_ids.numel() and bool(done.all()):
            break
        tok = select(dec.step(tok))
        tok = torch.where(done, torch.full_like(tok, pad), tok)
        done = done | torch.isin(tok, eos_ids)
        out.append(tok)
    _sync(device)
    t2 = time.perf_counter()
    return DecodeRun(torch.stack(out, 1), t1 - t0, t2 - t1, dec.mode, dec.setup_seconds, dec.prefill_mode)
