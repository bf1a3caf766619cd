"""Layer-by-layer quantization of a decoder-only transformers model.

:func:`quantize_model` walks the decoder blocks (``model.model.layers``) in order:

1. capture the inputs of every block once: the decoder blocks are replaced by
   recorders for one pass over the calibration ids (batched), which keeps the
   first block's hidden states and the keyword arguments each block is called
   with (attention mask, position ids, rotary position embeddings, ...), so
   whatever the installed ``transformers`` passes is passed back unchanged;
2. for each block: move it to the device, accumulate the Hessians
   ``E[x x^T]`` of its ``nn.Linear`` inputs with forward hooks over all
   calibration samples, quantize each linear with
   :func:`pvq.solvers.quantize_layer` (on ``W' = U W V^T`` and ``H' = V H V^T``
   when the method rotates), replace it by a :class:`QuantizedLinear`, run the
   quantized block to get the next block's inputs, and move it back.
   With ``config.sequential`` the linears are taken stage by stage (linears
   that read the same input: q/k/v, o, gate/up, down), so each stage's
   Hessian sees the earlier stages already quantized.

Peak memory is one block plus the calibration activations. A progress bar
(tqdm) and a log line per layer (relative output error, proxy loss, rate,
seconds) show the work.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from pvq.codecs import CodecError
from pvq.solvers import HessianAccumulator, SolverError, quantize_layer
from pvq.transforms import RandomizedHadamard, rotate_weight

from .methods import LayerPlan, QuantizeConfig, QuantizeError, QuantizePlan, decoder_layers
from .qlinear import QuantizedLinear

__all__ = ["LayerStats", "QuantizeReport", "check_calibration", "quantize_model"]

Log = Callable[[str], None] | None


# ---------------------------------------------------------------- report


@dataclass
class LayerStats:
    """One quantized linear layer: errors on the calibration inputs, rate, time."""

    name: str
    block: int
    out_features: int
    in_features: int
    codec: str
    proxy_loss: float  # tr((W - Q) H (W - Q)^T), H = E[x x^T] of the calibration inputs
    relative_error: float  # proxy_loss / tr(W H W^T): relative output MSE
    seconds: float
    stored_bits: int  # codes + codebooks + scales
    num_weights: int

    @property
    def bits_per_weight(self) -> float:
        return self.stored_bits / self.num_weights


@dataclass
class QuantizeReport:
    """What :func:`quantize_model` did: per-layer stats, total time, measured rate."""

    config: QuantizeConfig
    layers: list[LayerStats]
    seconds: float
    device: str
    num_samples: int
    seq_len: int
    notes: list[str] = field(default_factory=list)

    @property
    def stored_bits(self) -> int:
        return sum(s.stored_bits for s in self.layers)

    @property
    def num_weights(self) -> int:
        return sum(s.num_weights for s in self.layers)

    @property
    def bits_per_weight(self) -> float:
        """Stored bits of all quantized linears / their weight count (measured, not a formula)."""
        return self.stored_bits / self.num_weights

    @property
    def proxy_loss(self) -> float:
        return sum(s.proxy_loss for s in self.layers)

    def to_dict(self) -> dict:
        return {
            "method": self.config.method,
            "config": self.config.to_dict(),
            "bits_per_weight": self.bits_per_weight,
            "stored_bits": self.stored_bits,
            "num_weights": self.num_weights,
            "seconds": self.seconds,
            "device": self.device,
            "num_samples": self.num_samples,
            "seq_len": self.seq_len,
            "notes": list(self.notes),
            "layers": [{**asdict(s), "bits_per_weight": s.bits_per_weight} for s in self.layers],
        }


# ---------------------------------------------------------------- solver view of a codec


class _SolverCodec:
    """The codec as the solver sees it.

    * Hides ``encode_hessian`` when Hessian-optimal gains are switched off.
    * Codecs with a per-group zero point (asymmetric ``uniform``) need it in
      ``encode`` for the solver's column blocks: it is computed with the group's
      scale (the solver calls ``group_scales`` on each whole group before
      encoding its columns) and passed on, repeated per row.
    """

    def __init__(self, codec, hessian_gain: bool):
        self.codec = codec
        self.dim = codec.dim
        self.group_size = codec.group_size
        self.stores_scale = codec.stores_scale
        self.name = codec.name
        self._needs_zero = bool(getattr(codec, "needs_zero_point", False))
        self._zero: torch.Tensor | None = None
        if hessian_gain:
            self.encode_hessian = self._encode_hessian

    def group_scales(self, x: torch.Tensor) -> torch.Tensor:
        if self._needs_zero:
            self._zero = self.codec.group_zero_points(x)
        return self.codec.group_scales(x)

    def _zero_for(self, n: int) -> torch.Tensor:
        z = self._zero
        if z is None or n % z.shape[0]:
            raise SolverError("zero points requested before the group's scale was set (solver call order changed)")
        return z.repeat_interleave(n // z.shape[0])

    def encode(self, x, scale):
        if self._needs_zero:
            return self.codec.encode(x, scale, zero=self._zero_for(x.shape[0]))
        return self.codec.encode(x, scale)

    def _encode_hessian(self, x, scale, h):
        return self.codec.encode_hessian(x, scale, h)

    def decode(self, codes, scale):
        return self.codec.decode(codes, scale)

    def encode_decode(self, x, scale, hessian=None):
        if self._needs_zero or not hasattr(self.codec, "encode_decode"):
            codes = self.encode(x, scale) if hessian is None else self._encode_hessian(x, scale, hessian)
            return codes, self.decode(codes, scale)
        return self.codec.encode_decode(x, scale, hessian)


class _FixedCodebookCodec(_SolverCodec):
    """A K-means codec with its layer's fitted codebook, as the solver sees it.

    The codebook is data shared by all vectors of the layer: ``encode`` returns
    only ``{"index"}`` (so the solver can merge per-block codes), ``decode``
    puts the fixed codebook back. Assignment is plain nearest centroid of
    ``x / scale`` (the Hessian enters through the fitted codebook and through
    the solver's error feedback).
    """

    def __init__(self, codec, codebook: torch.Tensor):
        from pvq.codecs.kmeans import KMeansCodec

        fixed = KMeansCodec(**codec.config(), codebook=codebook)
        super().__init__(fixed, hessian_gain=False)
        self.codebook = fixed.codebook

    def encode(self, x, scale):
        return {"index": self.codec.encode(x, scale)["index"]}

    def decode(self, codes, scale):
        return self.codec.decode({"index": codes["index"], "codebook": self.codebook}, scale)

    def encode_decode(self, x, scale, hessian=None):
        codes = self.encode(x, scale)
        return codes, self.decode(codes, scale)

    def stored(self, res) -> dict[str, torch.Tensor]:
        tensors = dict(self.codec.pack({"index": res.merged_codes()["index"], "codebook": self.codebook}))
        tensors["scale"] = res.scales.reshape(-1).half()
        return tensors


def _fit_layer_codebook(w: torch.Tensor, h: torch.Tensor, codec, config: QuantizeConfig) -> torch.Tensor:
    """One codebook for the whole layer ``w: [out, in]``: weighted K-means of its
    vectors divided by their group scales (taken from ``w`` itself), with the
    importances of ``config.codebook_weighting``."""
    from pvq.codecs.kmeans import hessian_weights

    d, g = codec.dim, codec.group_size
    out, inp = w.shape
    wf = w.float()
    groups = wf.reshape(out * inp // (d * g), g, d)
    scale = codec.group_scales(groups).float().repeat_interleave(g)
    imp = hessian_weights(wf, h, d, config.codebook_weighting, config.damp)
    return codec.fit_codebook(wf.reshape(-1, d), scale, imp)


# ---------------------------------------------------------------- input capture


class _Stop(Exception):
    """Raised by hooks to end a forward pass early."""


@dataclass
class _Batch:
    hidden: torch.Tensor  # input of the current block [B, L, H]
    args: tuple  # positional arguments after hidden_states (usually none)
    kwargs: list[dict]  # keyword arguments of each block


def check_calibration(calib_ids, model: nn.Module) -> torch.Tensor:
    """Validate calibration token ids ``[n, L]`` (int) against the model's vocabulary."""
    if not isinstance(calib_ids, torch.Tensor):
        raise QuantizeError(f"calibration ids must be a LongTensor [n_samples, seq_len], got {type(calib_ids).__name__}")
    if calib_ids.dim() != 2 or calib_ids.shape[0] < 1 or calib_ids.shape[1] < 1:
        raise QuantizeError(
            f"calibration ids must have shape [n_samples, seq_len] with both >= 1, got {tuple(calib_ids.shape)}; "
            "build them with pvq.models.calibration_batches"
        )
    if calib_ids.dtype.is_floating_point or calib_ids.dtype == torch.bool:
        raise QuantizeError(f"calibration ids must be integer token ids, got {calib_ids.dtype}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    lo, hi = int(calib_ids.min()), int(calib_ids.max())
    if lo < 0 or (vocab is not None and hi >= vocab):
        raise QuantizeError(
            f"calibration ids span [{lo}, {hi}] but the model's vocabulary is [0, {vocab}); "
            "tokenize with the model's own tokenizer"
        )
    return calib_ids.long()


def _base_model(model: nn.Module) -> nn.Module:
    return model.model


@torch.no_grad()
def _capture(model: nn.Module, calib_ids: torch.Tensor, device: torch.device, batch_size: int) -> list[_Batch]:
    """Inputs of block 0 and the keyword arguments of every block, per batch."""
    base = _base_model(model)
    layers = decoder_layers(model)
    moved = []
    for name, child in base.named_children():
        if child is layers:
            continue
        moved.append((child, _module_device(child)))
        child.to(device)
    batches: list[_Batch] = []
    record: dict = {}
    saved = [layer.__dict__.get("forward") for layer in layers]

    def recorder(i: int):
        def forward(*args, **kwargs):
            if args:
                hidden, rest = args[0], tuple(args[1:])
            else:
                hidden, rest = kwargs.pop("hidden_states"), ()
            if i == 0:
                record["hidden"], record["args"] = hidden, rest
            record.setdefault("kwargs", []).append(kwargs)
            if i == len(layers) - 1:
                raise _Stop
            return hidden

        return forward

    try:
        for i, layer in enumerate(layers):
            layer.forward = recorder(i)
        for start in range(0, calib_ids.shape[0], batch_size):
            record.clear()
            ids = calib_ids[start : start + batch_size].to(device)
            try:
                base(input_ids=ids, use_cache=False)
            except _Stop:
                pass
            if "hidden" not in record or len(record.get("kwargs", [])) != len(layers):
                raise QuantizeError(
                    f"{type(model).__name__} did not call its {len(layers)} decoder blocks in order during "
                    "a forward pass; this model family is not supported by the layer-by-layer driver"
                )
            kwargs = [_dedupe(k, record["kwargs"][0]) for k in record["kwargs"]]
            batches.append(_Batch(record["hidden"], record["args"], kwargs))
    finally:
        for layer, fwd in zip(layers, saved):
            if fwd is None:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = fwd
        for child, dev in moved:
            if dev is not None:
                child.to(dev)
    return batches


def _dedupe(kwargs: dict, first: dict) -> dict:
    """Share the first block's dict when every value is the same object (saves memory)."""
    if kwargs.keys() == first.keys() and all(kwargs[k] is first[k] for k in kwargs):
        return first
    return kwargs


def _module_device(m: nn.Module) -> torch.device | None:
    for t in m.parameters():
        return t.device
    for t in m.buffers():
        return t.device
    return None


def _run_block(block: nn.Module, batch: _Batch, i: int) -> torch.Tensor:
    out = block(batch.hidden, *batch.args, **batch.kwargs[i])
    return out[0] if isinstance(out, (tuple, list)) else out


# ---------------------------------------------------------------- one block


def _linears(block: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}


@torch.no_grad()
def _stages(block: nn.Module, batch: _Batch, i: int, names: list[str], sequential: bool) -> list[list[str]]:
    """Linears grouped by shared input, in call order (one stage when not sequential).

    Runs the block once on the first calibration batch; linears called one
    after another on the same input tensor (q/k/v; gate/up) form one stage.
    """
    calls: list[tuple[str, torch.Tensor]] = []  # the inputs are kept alive so identities stay unique
    mods = _linears(block)
    hooks = [mods[n].register_forward_hook(lambda m, inp, out, n=n: calls.append((n, inp[0]))) for n in names]
    try:
        _run_block(block, batch, i)
    finally:
        for h in hooks:
            h.remove()
    seen = {n for n, _ in calls}
    missing = [n for n in names if n not in seen]
    if missing:
        raise QuantizeError(
            f"linear layers {missing} of block {i} are never called in its forward pass; cannot collect their Hessians"
        )
    order: list[list[str]] = []
    last = None
    for n, x in calls:
        if any(n in s for s in order):
            continue
        if order and x is last:
            order[-1].append(n)
        else:
            order.append([n])
        last = x
    return order if sequential else [[n for s in order for n in s]]


@torch.no_grad()
def _collect_hessians(
    block: nn.Module, batches: list[_Batch], i: int, names: list[str], device: torch.device
) -> dict[str, HessianAccumulator]:
    mods = _linears(block)
    accs = {n: HessianAccumulator(mods[n].in_features, device=device) for n in names}
    pending: set[str] = set()

    def hook(n):
        def fn(m, inp, out):
            accs[n].add(inp[0].detach())
            pending.discard(n)
            if not pending:
                raise _Stop

        return fn

    hooks = [mods[n].register_forward_hook(hook(n)) for n in names]
    try:
        for b in batches:
            pending.update(names)
            try:
                _run_block(block, b, i)
            except _Stop:
                pass
    finally:
        for h in hooks:
            h.remove()
    return accs


def _rotate_hessian(h: torch.Tensor, v: RandomizedHadamard) -> torch.Tensor:
    """``V H V^T`` for symmetric ``H: [in, in]`` (float64)."""
    a = v.forward(h)  # H V^T
    return v.forward(a.T.contiguous()).T.contiguous()  # V (H V^T)


def _quantize_linear(
    linear: nn.Linear, h: torch.Tensor, plan: LayerPlan, config: QuantizeConfig, device: torch.device
) -> tuple[QuantizedLinear, float, float, float]:
    """Quantize one linear under its Hessian; returns (module, proxy loss, relative error, seconds)."""
    t0 = time.perf_counter()
    w = linear.weight.detach().to(device=device, dtype=torch.float64)
    if not torch.isfinite(w).all():
        raise QuantizeError(f"{plan.name} holds non-finite weights (NaN or inf); fix the checkpoint before quantizing")
    h = h.to(device=device, dtype=torch.float64)
    if plan.rotation is not None:
        u = RandomizedHadamard(plan.out_features, plan.rotation["out_seed"])
        v = RandomizedHadamard(plan.in_features, plan.rotation["in_seed"])
        w = rotate_weight(w, u, v)
        h = _rotate_hessian(h, v)
    fits_codebook = callable(getattr(plan.codec, "fit_codebook", None)) and getattr(plan.codec, "codebook", 1) is None
    try:
        if fits_codebook:
            solver_codec = _FixedCodebookCodec(plan.codec, _fit_layer_codebook(w, h, plan.codec, config))
        else:
            solver_codec = _SolverCodec(plan.codec, config.use_hessian_gain)
        res = quantize_layer(
            w.float(), h, solver_codec, error_feedback=config.use_error_feedback, damp_rel=config.damp
        )
    except (SolverError, CodecError) as e:
        raise QuantizeError(f"{plan.name}: {e}") from e
    if fits_codebook:
        stored = solver_codec.stored(res)
    else:
        stored = res.stored(plan.codec).tensors
    q = QuantizedLinear.from_stored(linear, solver_codec.codec, stored, plan.rotation)
    q.seed_cache(res.weight, linear.weight.dtype)  # res.weight == decode(stored codes), bit for bit
    return q, res.proxy_loss, res.relative_error, time.perf_counter() - t0


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


# ---------------------------------------------------------------- driver


def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    calib_ids: torch.Tensor,
    config: QuantizeConfig,
    device: torch.device | str | None = None,
    progress: bool = True,
    log: Log = print,
    *,
    batch_size: int = 8,
    blocks: list[int] | None = None,
) -> QuantizeReport:
    """Quantize every ``nn.Linear`` of ``model``'s decoder blocks in place.

    model: a transformers causal LM with ``model.model.layers`` (Llama,
        Mistral, Qwen2, ...), on CPU (or any device); blocks are moved to
        ``device`` one at a time and back.
    calib_ids: calibration token ids ``[n_samples, seq_len]``.
    config: the method, rate and switches; checked against the model (and the
        rate against the codecs) before any work.
    device: where blocks are quantized (default: CUDA if available, else CPU).
    progress: show a tqdm bar; log: called with one line per layer (None: quiet).
    batch_size: calibration samples per forward pass.
    blocks: quantize only these decoder blocks (indices; default all). The
        others are run as they are (quantized or not) to feed the next ones.
        With ``config.lora_steps > 0`` and ``blocks`` unset, the run follows the
        LoRA recovery schedule of :func:`pvq.models.lora.quantize_with_lora`.

    Bad input (config, model structure, calibration ids) raises
    :class:`QuantizeError` before any work; an error during the work leaves
    the model partly quantized (reload it before retrying).
    """
    t0 = time.perf_counter()
    if not isinstance(config, QuantizeConfig):
        raise QuantizeError(f"config must be a QuantizeConfig, got {type(config).__name__}")
    if config.lora_steps and blocks is None:
        from .lora import quantize_with_lora

        return quantize_with_lora(model, calib_ids, config, device=device, progress=progress, log=log,
                                  batch_size=batch_size)
    plan = config.plan(model)
    if blocks is not None:
        if not blocks or any(not isinstance(b, int) or not 0 <= b < plan.num_blocks for b in blocks):
            raise QuantizeError(f"blocks must be a non-empty list of block indices in [0, {plan.num_blocks}), got {blocks!r}")
        chosen = set(blocks)
        plan = QuantizePlan(config, [p for p in plan.layers if p.block in chosen], plan.num_blocks)
    calib_ids = check_calibration(calib_ids, model)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise QuantizeError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = _resolve_device(device)
    say = log or (lambda s: None)
    for note in plan.notes:
        say(note)
    was_training = model.training
    model.eval()
    layers = decoder_layers(model)
    stats: list[LayerStats] = []
    bar = _progress_bar(len(plan.layers), progress, f"quantize {config.method} {config.bits:g} bits")
    try:
        batches = _capture(model, calib_ids, device, batch_size)
        last = max(p.block for p in plan.layers)
        for i, block in enumerate(layers):
            if i > last:
                break
            home = _module_device(block)
            block.to(device)
            if plan.by_block(i):
                stats.extend(_quantize_block(block, i, batches, plan, config, device, say, bar))
            for b in batches:
                b.hidden = _run_block(block, b, i)
            home = home if home is not None else device
            block.to(home)
            if home != device:  # a cache computed on another device could differ in the last bits
                for m in block.modules():
                    if isinstance(m, QuantizedLinear):
                        m.clear_cache()
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    report = QuantizeReport(
        config, stats, time.perf_counter() - t0, str(device), int(calib_ids.shape[0]), int(calib_ids.shape[1]),
        list(plan.notes),
    )
    say(
        f"quantized {len(stats)} linear layers with {config.method} in {report.seconds:.1f}s: "
        f"{report.bits_per_weight:.4f} bits per weight (measured from stored tensors)"
    )
    return report


def _quantize_block(block, i, batches, plan: QuantizePlan, config, device, say, bar) -> list[LayerStats]:
    prefix = f"model.layers.{i}."
    layer_plans = {p.name[len(prefix):]: p for p in plan.by_block(i)}
    names = list(layer_plans)
    out: list[LayerStats] = []
    for stage in _stages(block, batches[0], i, names, config.sequential):
        accs = _collect_hessians(block, batches, i, stage, device)
        mods = _linears(block)
        for n in stage:
            p = layer_plans[n]
            q, loss, rel, secs = _quantize_linear(mods[n], accs[n].hessian(), p, config, device)
            del accs[n]
            _set_submodule(block, n, q)
            s = LayerStats(p.name, i, p.out_features, p.in_features, p.codec.describe(), loss, rel, secs,
                           q.stored_bits(), q.num_weights)
            out.append(s)
            say(
                f"{p.name:<40} [{p.out_features}x{p.in_features}] rel.err {rel:.5f}  proxy {loss:.4g}  "
                f"{s.bits_per_weight:.3f} b/w  {secs:.2f}s"
            )
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"block {i} rel.err {rel:.4f}")
    return out


def _progress_bar(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc=desc, unit="layer", leave=False)
