"""Layer-by-layer quantization of a decoder-only transformers model.

:func:`quantize_model` walks the decoder blocks (``model.model.layers``) in order:

0. under the ``fused`` rotation plan, rewrite the model first (norms folded, the residual
   stream and the heads rotated in the weights: :func:`pvq.models.rotation_plan.fold_rotations`);
   its layers then quantize with the plan's own rotations (none, or down_proj's input side); a head
   tied to the input embedding is untied first when both are to be quantized; then, with
   ``config.quantize_embedding``, the input embedding's table is quantized (after an allocation's
   measurement; identity Hessian: each row's own error), so the blocks are calibrated on its output;
1. capture the inputs of every block once: the decoder blocks are replaced by
   recorders for one pass over the calibration ids (batched), which keeps the
   first block's hidden states and the keyword arguments each block is called
   with (attention mask, position ids, rotary position embeddings, ...), so
   whatever the installed ``transformers`` passes is passed back unchanged;
2. for each block: move it to the device, accumulate the Hessians
   ``E[x x^T]`` of its ``nn.Linear`` inputs with forward hooks over all
   calibration samples, quantize each linear with
   :func:`pvq.solvers.quantize_linear` (rotation, codec fit, block LDLQ; the
   driver never knows which codec it runs), replace it by a
   :class:`QuantizedLinear`; with ``config.finetune_steps``, tune the block's codebooks
   and scales (codes fixed) towards its outputs before quantization
   (:class:`pvq.models.finetune.BlockFinetune`, AQLM's fine-tuning); run the quantized
   block to get the next block's inputs, and move it back;
3. after each block, the block hooks run (LoRA recovery after a chunk of
   blocks, :class:`pvq.models.lora.LoraRecovery`, when ``lora_steps > 0``).
   With ``config.sequential`` the linears are taken stage by stage (linears
   that read the same input: q/k/v, o, gate/up, down), so each stage's
   Hessian sees the earlier stages already quantized.
4. with ``config.quantize_head``, the LM head is quantized last, under ``E[x x^T]`` of the final
   norm of the last block's outputs (a tied head only with ``quantize_embedding``: refused before
   any work otherwise);
5. with activation settings (``config.act_bits``), every quantized linear gets its
   :class:`~pvq.models.activations.ActivationQuant` at the end: weights are fitted on
   unquantized activations (as QuaRot's GPTQ does), inputs are quantized at inference.

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

from pvq.errors import PvqError, QuantizeError
from pvq.solvers import quantize_linear
from pvq.solvers.codebook_update import can_update

from .calibration import check_calibration
from .capture import (block_linears, capture_block_inputs, collect_hessians, linear_stages, module_device,
                      norm_output_hessian, run_block)
from .devices import resolve_device
from .finetune import BlockFinetune
from .lora import BlockHook, LoraRecovery
from .experts import HOLDER_SUFFIX, QuantizedExperts, collect_expert_hessians, install_experts
from .format import block_rate
from .methods import QuantizeConfig, decoder_layers
from .offload import InputPlacer
from .plan import LayerPlan, QuantizePlan, embedding_plan, head_plan
from .qlinear import QuantizedEmbedding, QuantizedLinear, set_activation_quant
from .rotation_plan import fold_block, fold_rotations
from .structure import embedding_as_linear, head_input_norm, head_is_tied, input_embedding, linear_weight, untie_head

__all__ = ["LayerStats", "QuantizeReport", "quantize_model"]

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
    dim: int = 0  # vector dimension D of the layer's codec
    tokens: int | None = None  # experts: calibration tokens routed to this expert
    hessian: str = "own"  # "own" (a linear's inputs), "routed" (an expert's tokens), "pooled" (too few routed)

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
    kept: dict[str, dict] = field(default_factory=dict)  # block weights left unquantized: {name: {numel, bits}}
    allocation: dict | None = None  # --allocate: each layer's rate and why (pvq.models.allocation)
    head: LayerStats | None = None  # --quantize-head: the LM head (not a block weight: not in bits_per_weight)
    embedding: LayerStats | None = None  # --quantize-embedding: the input embedding (not in bits_per_weight)

    @property
    def quantized_bits(self) -> int:
        return sum(s.stored_bits for s in self.layers)

    @property
    def quantized_weights(self) -> int:
        return sum(s.num_weights for s in self.layers)

    @property
    def stored_bits(self) -> int:
        """Bits of every block weight: the quantized ones' stored tensors, the kept ones at their dtype."""
        return self.quantized_bits + sum(k["numel"] * k["bits"] for k in self.kept.values())

    @property
    def num_weights(self) -> int:
        return self.quantized_weights + sum(k["numel"] for k in self.kept.values())

    @property
    def bits_per_weight(self) -> float:
        """Stored bits of all block weights / their count (measured, not a formula): quantized
        weights from their stored tensors, weights left unquantized (``kept``) at their dtype's bits."""
        return self.stored_bits / self.num_weights

    @property
    def quantized_fraction(self) -> float:
        """Fraction of the block weights that were quantized."""
        return self.quantized_weights / self.num_weights

    def recount_kept(self, bits: int) -> None:
        """Count the kept weights at ``bits`` each (the dtype they will be saved in)."""
        self.kept = {n: {**k, "bits": int(bits)} for n, k in self.kept.items()}

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
            "quantized_fraction": self.quantized_fraction,
            "kept": dict(self.kept),
            "seconds": self.seconds,
            "device": self.device,
            "num_samples": self.num_samples,
            "seq_len": self.seq_len,
            "notes": list(self.notes),
            "layers": [{**asdict(s), "bits_per_weight": s.bits_per_weight} for s in self.layers],
            **({"allocation": self.allocation} if self.allocation is not None else {}),
            **({"head": {**asdict(self.head), "bits_per_weight": self.head.bits_per_weight}}
               if self.head is not None else {}),
            **({"embedding": {**asdict(self.embedding), "bits_per_weight": self.embedding.bits_per_weight}}
               if self.embedding is not None else {}),
        }


def _quantize_linear(
    linear: nn.Linear, hessian: Callable[[], torch.Tensor], plan: LayerPlan, config: QuantizeConfig,
    device: torch.device, module: type[QuantizedLinear] = QuantizedLinear,
) -> tuple[QuantizedLinear, float, float, float]:
    """Quantize one linear under the Hessian ``hessian()`` returns; returns (module, proxy loss, relative
    error, seconds). The Hessian goes to the solver as a temporary (no name here holds it), so the solver
    can free it once it has rotated it: one ``[in, in]`` float64 matrix fewer at the solve's peak."""
    w = linear_weight(linear).detach().to(device=device, dtype=torch.float64)
    try:
        res = quantize_linear(w, hessian().to(device), plan.codec, plan.rotation, config.solver_config())
    except PvqError as e:
        raise QuantizeError(f"{plan.name}: {e}") from e
    q = module.from_stored(linear, res.codec, res.stored, plan.rotation)
    q.seed_cache(res.rotated_weight, linear.weight.dtype)  # == decode(stored codes), bit for bit
    return q, res.proxy_loss, res.relative_error, res.seconds


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


# ---------------------------------------------------------------- driver


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
    hooks: list[BlockHook] | None = None,
    io=None,
    activations: str = "device",
    scratch=None,
    parallel=None,
    allocation=None,
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
    hooks: called after each block (default: LoRA recovery when
        ``config.lora_steps > 0``); a hook's notes go into the report.
    io: block storage (:class:`pvq.models.streaming.BlockStore`: resumed and streamed runs).
        ``io.load_block(model, i)`` makes block ``i`` ready before it runs and returns its
        layer stats when it was finished by an earlier run (then it is only run, not
        quantized); ``io.block_done(model, i, stats)`` follows the block's hooks.
    activations: where the calibration activations live between blocks: ``device``,
        ``cpu``, ``disk`` or ``auto`` (:class:`pvq.models.offload.InputPlacer`); scratch:
        the directory of the disk file (None: a temporary one).
    parallel: this rank of a distributed run (:class:`pvq.models.distributed.Parallel`): it
        captures and runs its share of the calibration batches; Hessians are summed over the
        ranks and the linears of a stage are solved on different ranks.
    allocation: a :class:`pvq.models.allocation.AllocateConfig`: before the work, measure every
        layer at candidate rates and give each its own codec so that the quantized weights
        average ``config.bits`` (the record goes into ``report.allocation``).

    Bad input (config, model structure, calibration ids, device) raises
    :class:`QuantizeError` before any work; an error during the work leaves
    the model partly quantized (reload it before retrying).
    """
    t0 = time.perf_counter()
    if not isinstance(config, QuantizeConfig):
        raise QuantizeError(f"config must be a QuantizeConfig, got {type(config).__name__}")
    plan = config.plan(model) if allocation is None else allocation.base_plan(config, model)
    if blocks is not None:
        if not blocks or any(not isinstance(b, int) or not 0 <= b < plan.num_blocks for b in blocks):
            raise QuantizeError(f"blocks must be a non-empty list of block indices in [0, {plan.num_blocks}), got {blocks!r}")
        chosen = set(blocks)
        plan = QuantizePlan(config, [p for p in plan.layers if p.block in chosen], plan.num_blocks, path=plan.path,
                            rotation=plan.rotation, base_bits=plan.base_bits)
    calib_ids = check_calibration(calib_ids, model)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise QuantizeError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = resolve_device(device)
    if hooks is None:
        hooks = [LoraRecovery(config.lora_steps, seed=config.seed, device=device)] if config.lora_steps else []
    tuner = _finetuner(config, plan)
    if config.quantize_head or config.quantize_embedding:
        _check_head_and_embedding(model, config, plan, blocks, parallel)
    if allocation is not None:
        allocation.check(config)
    say = log or (lambda s: None)
    notes = list(plan.notes)
    for note in plan.notes:
        say(note)
    # a streamed skeleton (blocks on the meta device, read by ``io``): its blocks are folded as they are read
    streamed_fold = plan.rotation == "fused" and any(t.is_meta for t in model.parameters())
    if streamed_fold and io is None:
        raise QuantizeError("this model's weights are not all in memory (a skeleton on the meta device) and no block "
                            "reader was given: the fused rotation plan needs a streamed run's io (BlockStore), or "
                            "rotation='layer'")
    was_training = model.training
    model.eval()
    if config.quantize_head and config.quantize_embedding and head_is_tied(model):
        untie_head(model)  # two tables, folded and quantized apart (checked above)
        note = "the LM head was tied to the input embedding: untied, the two quantized apart"
        notes.append(note)
        say(note)
    if plan.rotation == "fused":  # rewrite the model (exactly) before anything sees its activations
        fold_rotations(model, config.seed, streamed=streamed_fold, device=device)
    record = None
    if allocation is not None:  # per-layer rates chosen by measurement: a new plan, then the same work
        plan, record = allocation.apply(model, calib_ids, plan, device, batch_size, say)
    embedding = _quantize_embedding(model, plan, config, device, say) if config.quantize_embedding else None
    layers = decoder_layers(model)
    stats: list[LayerStats] = []
    bar = _progress_bar(sum(p.count for p in plan.layers), progress, f"quantize {config.method} {config.bits:g} bits")
    local_ids = calib_ids
    if parallel is not None:  # [parallel hook] this rank's contiguous run of whole batches
        if any(p.experts is not None for p in plan.layers) or hooks or tuner is not None:
            raise QuantizeError("distributed runs do not split expert stacks or run block hooks (LoRA, "
                                "fine-tuning) yet; run this model in one process")
        local_ids = calib_ids[parallel.local_samples(int(calib_ids.shape[0]), batch_size)]
    placer = InputPlacer(activations, device, int(local_ids.shape[0]), scratch)
    try:
        batches = capture_block_inputs(model, local_ids, device, batch_size, place=placer)
        if placer.where != "device":
            notes.append(placer.note)
            say(placer.note)
        last = max(p.block for p in plan.layers)
        for i, block in enumerate(layers):
            if i > last:
                break
            done = io.load_block(model, i) if io is not None else None  # [io hook] resumed/streamed blocks
            block = layers[i]
            home = module_device(block)
            block.to(device)
            if streamed_fold and done is None:  # just read from the source: fold it (on the device, as the
                fold_block(model, i)  # in-memory fold does each block)
            block_stats = []
            if plan.by_block(i) and done is not None:
                block_stats = done
                if bar is not None:
                    bar.update(len(done))
            elif plan.by_block(i):
                targets = tuner.targets(block, batches, i) if tuner is not None else None  # unquantized outputs
                block_stats = _quantize_block(block, i, batches, plan, config, device, say, bar, parallel)
                if tuner is not None:  # codebooks and scales towards those outputs, before propagating
                    note = tuner.tune(block, batches, targets, i)
                    del targets
                    if note:
                        notes.append(note)
                        say(note)
            stats.extend(block_stats)
            for b in batches:
                b.hidden = run_block(block, b, i)
            home = home if home is not None else device
            block.to(home)
            if home != device:  # a cache computed on another device could differ in the last bits
                for m in block.modules():
                    if isinstance(m, (QuantizedLinear, QuantizedExperts)):
                        m.clear_cache()
            for hook in hooks:
                note = hook.after_block(model, calib_ids, i, plan.num_blocks)
                if note:
                    notes.append(note)
                    say(note)
            if io is not None:  # [io hook] keep the finished block (work directory), free a streamed one
                io.block_done(model, i, block_stats)
        head = _quantize_head(model, batches, plan, config, device, say) if config.quantize_head else None
        act = config.activation_quant()
        if act is not None:  # weights were fitted on unquantized activations; inference quantizes them
            set_activation_quant(model, act)
    finally:
        placer.close()
        if bar is not None:
            bar.close()
        model.train(was_training)
    report = QuantizeReport(
        config, stats, time.perf_counter() - t0, str(device), int(calib_ids.shape[0]), int(calib_ids.shape[1]),
        notes, kept=block_rate(model)["kept"], allocation=record, head=head, embedding=embedding,
    )
    if report.kept:
        say(f"left unquantized (counted at their dtype's bits): {', '.join(report.kept)}")
    say(
        f"quantized {len(stats)} layers with {config.method} in {report.seconds:.1f}s "
        f"({report.quantized_fraction:.1%} of the block weights): "
        f"{report.bits_per_weight:.4f} bits per block weight (measured from stored tensors)"
    )
    return report


def _check_head_and_embedding(model: nn.Module, config: QuantizeConfig, plan: QuantizePlan, blocks, parallel) -> None:
    """Refuse ``quantize_head`` / ``quantize_embedding`` before any work where they cannot run (says what to
    change). A tied head needs both: quantizing one table of a tied pair would store the other beside it."""
    tied = head_is_tied(model)
    if config.quantize_embedding:
        name, emb = input_embedding(model)
        if tied and not config.quantize_head:
            raise QuantizeError(f"{name} is tied to the LM head (tie_word_embeddings): quantizing the embedding "
                                "alone would store the head's table beside it; add --quantize-head (the two are "
                                "untied and quantized apart) or drop --quantize-embedding")
        if emb.weight.is_meta:
            raise QuantizeError("--quantize-embedding needs the input embedding in memory: drop it or --stream")
        if parallel is not None:
            raise QuantizeError("distributed runs do not quantize the input embedding yet: drop --quantize-embedding "
                                "or run one process")
    if config.quantize_head:
        _check_head(model, plan, blocks, parallel, tied and not config.quantize_embedding)


def _check_head(model: nn.Module, plan: QuantizePlan, blocks, parallel, tied: bool) -> None:
    """Refuse ``quantize_head`` before any work where it cannot run (says what to change)."""
    head_name, head, _ = head_input_norm(model)
    if tied:
        raise QuantizeError(f"{head_name} shares its weight with the input embedding (tie_word_embeddings): "
                            "quantizing the head alone would store the embedding's table beside it; add "
                            "--quantize-embedding (the two are untied and quantized apart) or drop --quantize-head")
    if any(t.is_meta for t in head.parameters()):
        raise QuantizeError("--quantize-head needs the LM head in memory; a streamed run never loads it: drop "
                            "--quantize-head or --stream")
    if parallel is not None:
        raise QuantizeError("distributed runs do not quantize the LM head yet: drop --quantize-head or run one process")
    if blocks is not None and plan.num_blocks - 1 not in blocks:
        raise QuantizeError("--quantize-head reads the last block's outputs: include the last block in the run")


@torch.no_grad()
def _quantize_embedding(model: nn.Module, plan: QuantizePlan, config: QuantizeConfig, device, say) -> LayerStats:
    """Quantize the input embedding in place, before the blocks (they are calibrated on its output): its table
    ``[vocab, hidden]`` as a layer's weight under the identity Hessian (each row's own squared error: a
    lookup's error does not mix rows, and no calibration input weights the hidden dimensions). Returns its
    stats."""
    _, emb = input_embedding(model)
    p = embedding_plan(config, plan, model)
    table = embedding_as_linear(emb)
    home = emb.weight.device
    q, loss, rel, secs = _quantize_linear(
        table, lambda: torch.eye(p.in_features, dtype=torch.float64, device=device), p, config, device,
        module=QuantizedEmbedding)
    q.table_dtype = emb.weight.dtype
    return _install_table(model, q, p, home, device, (loss, rel, secs), "the input embedding", say)


def _install_table(model: nn.Module, q: QuantizedLinear, p: LayerPlan, home, device, measured: tuple,
                   what: str, say) -> LayerStats:
    """Put a quantized table (the input embedding, the LM head) where its module was (on its device) and
    return its stats; ``measured``: (proxy loss, relative error, seconds)."""
    loss, rel, secs = measured
    if home is not None and home != device:  # where it was (a cache from elsewhere could differ)
        q.to(home)
        q.clear_cache()
    _set_submodule(model, p.name, q)
    st = LayerStats(p.name, p.block, p.out_features, p.in_features, p.codec.describe(), loss, rel, secs,
                    q.stored_bits(), q.num_weights, p.dim)
    say(f"{p.name:<40} [{p.out_features}x{p.in_features}] D={p.dim} rel.err {rel:.5f}  proxy {loss:.4g}  "
        f"{st.bits_per_weight:.3f} b/w  {secs:.2f}s ({what})")
    return st


@torch.no_grad()
def _quantize_head(model: nn.Module, batches, plan: QuantizePlan, config: QuantizeConfig, device, say) -> LayerStats:
    """Quantize the LM head in place under ``E[x x^T]`` of its inputs: the final norm of the last (quantized)
    block's outputs on the calibration batches. Returns its stats."""
    _, head, norm = head_input_norm(model)
    p = head_plan(config, plan, model)
    acc = norm_output_hessian(norm, batches, p.in_features, device)
    head_home = module_device(head)
    q, loss, rel, secs = _quantize_linear(head, acc.take, p, config, device)
    return _install_table(model, q, p, head_home, device, (loss, rel, secs), "the LM head", say)


def _finetuner(config: QuantizeConfig, plan: QuantizePlan) -> BlockFinetune | None:
    """The block fine-tuning step of ``config`` (None when off); refused before any work when no
    layer of the plan has codebooks to tune."""
    if not config.finetune_steps:
        return None
    if not any(can_update(p.codec) for p in plan.layers):
        raise QuantizeError(f"--finetune-steps tunes codebooks and scales with the codes fixed; method "
                            f"{config.method!r} has no codebook to tune: use aqlm or gptvq, or drop --finetune-steps")
    return BlockFinetune(config.finetune_steps, config.finetune_lr)


def _quantize_block(block, i, batches, plan: QuantizePlan, config, device, say, bar, parallel=None) -> list[LayerStats]:
    prefix = f"{plan.path}.{i}."
    layer_plans = {p.name[len(prefix):]: p for p in plan.by_block(i) if p.experts is None}
    expert_plans: dict[str, list[LayerPlan]] = {}
    for p in plan.by_block(i):
        if p.experts is not None:
            expert_plans.setdefault(p.experts.owner, []).append(p)
    names = list(layer_plans)
    out: list[LayerStats] = []
    for stage in linear_stages(block, batches[0], i, names, config.sequential, list(expert_plans)):
        if stage[0] in expert_plans:
            owner = stage[0]
            subs = [[p] for p in expert_plans[owner]] if config.sequential else [expert_plans[owner]]
            for sub in subs:
                out.extend(_quantize_experts(block, i, owner, sub, batches, config, device, say, bar))
            continue
        accs = collect_hessians(block, batches, i, stage, device)
        if parallel is not None:  # [parallel hook] the ranks' Hessian sums added in rank order
            parallel.reduce(accs)
        mods = block_linears(block, stage)

        def solve(n):
            acc = accs.pop(n)
            shared = any(a is acc for a in accs.values())  # q/k/v, gate/up: the last reader takes the sum
            return _quantize_linear(mods[n], acc.hessian if shared else acc.take, layer_plans[n], config, device)

        # [parallel hook] each rank solves its share of the stage; every result is broadcast
        results = parallel.run_stage(stage, solve) if parallel is not None else None
        for n in stage:
            p = layer_plans[n]
            q, loss, rel, secs = results[n] if results is not None else solve(n)
            _set_submodule(block, n, q)
            s = LayerStats(p.name, i, p.out_features, p.in_features, p.codec.describe(), loss, rel, secs,
                           q.stored_bits(), q.num_weights, p.dim)
            out.append(s)
            say(
                f"{p.name:<40} [{p.out_features}x{p.in_features}] D={p.dim} rel.err {rel:.5f}  proxy {loss:.4g}  "
                f"{s.bits_per_weight:.3f} b/w  {secs:.2f}s"
            )
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"block {i} rel.err {rel:.4f}")
    return out


def _quantize_experts(block, i, owner, plans: list[LayerPlan], batches, config, device, say, bar) -> list[LayerStats]:
    """Quantize expert stacks of the experts module ``owner``: each expert under the Hessian of the
    tokens routed to it; an expert with fewer routed tokens than its input size (a rank-deficient
    Hessian) under the stack's pooled Hessian (the inputs of this projection in all experts)."""
    mod = block.get_submodule(owner)
    params = [p.experts.param for p in plans]
    accs = collect_expert_hessians(
        block, owner, params, {p.experts.param: p.in_features for p in plans}, plans[0].experts.num_experts,
        lambda b: run_block(block, b, i), batches, device,
    )
    out = []
    for p in plans:
        st = p.experts
        a = accs[st.param]
        tokens = [x.tokens for x in a]
        if sum(tokens) == 0:
            raise QuantizeError(f"{p.name}: no calibration token reached any expert; cannot collect Hessians")
        pooled = sum(x.sum for x in a) / sum(tokens)
        weight = mod._parameters[st.param].detach()
        qs, few = [], []
        for e in range(st.num_experts):
            w = weight[e].t() if st.transposed else weight[e]
            own = tokens[e] >= p.in_features
            h = a[e].hessian() if own else pooled
            if not own:
                few.append(e)
            sub = LayerPlan(p.block, f"{p.name}.{e}", p.out_features, p.in_features, p.dim, p.group_size, p.codec,
                            p.expert_rotations[e])
            t0 = time.perf_counter()
            try:
                res = quantize_linear(w.to(device=device, dtype=torch.float64), h.to(device), sub.codec, sub.rotation,
                                      config.solver_config())
            except PvqError as err:
                raise QuantizeError(f"{sub.name}: {err}") from err
            q = QuantizedLinear.from_weight_stored(p.in_features, p.out_features, None, weight, res.codec, res.stored,
                                                   sub.rotation)
            qs.append(q)
            name = f"{p.name.rpartition('.')[0]}.{st.param}{HOLDER_SUFFIX}.{e}"
            out.append(LayerStats(name, i, p.out_features, p.in_features, p.codec.describe(), res.proxy_loss,
                                  res.relative_error, time.perf_counter() - t0, q.stored_bits(), q.num_weights, p.dim,
                                  tokens=tokens[e], hessian="routed" if own else "pooled"))
            if bar is not None:
                bar.update(1)
        del a
        install_experts(mod, QuantizedExperts(st.param, qs, st.transposed))
        mine = out[-st.num_experts:]
        rel = [s.relative_error for s in mine]
        say(
            f"{p.name:<40} {st.num_experts} experts [{p.out_features}x{p.in_features}] D={p.dim} routed tokens "
            f"{min(tokens)}-{max(tokens)}, rel.err {min(rel):.5f}-{max(rel):.5f}  "
            f"{sum(s.stored_bits for s in mine) / sum(s.num_weights for s in mine):.3f} b/w"
        )
        if few:
            say(f"{p.name}: experts {few} saw fewer routed tokens than their {p.in_features} inputs "
                f"({[tokens[e] for e in few]}); quantized under the pooled Hessian of all experts' inputs")
    return out


def _progress_bar(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc=desc, unit="layer", leave=False)
