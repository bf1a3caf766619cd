"""Per-layer rates under a size budget (``pvq quantize --bits R --allocate``), chosen by measurement.

:meth:`AllocateConfig.apply` runs before the driver's quantization pass:

1. candidates: for every layer, the method's codec at each rate of a ladder between ``min_bits``
   and ``max_bits`` (``step`` apart, the target included), duplicates (same codec config) dropped;
2. measurement, block by block like the driver (a copy of each block; the layers are measured on
   the inputs of the blocks before, quantized at the target rate, and the block's earlier stages
   are quantized at the target before a later stage's Hessian is collected): per layer and
   candidate the stored bits (from the stored tensors) and a distortion,

   * ``proxy``: the solver's Hessian-weighted error ``tr((W - Q) H (W - Q)^T)`` on a
     seeded fraction ``rows`` of the (rotated) output rows, scaled to the layer (rows are solved
     independently, so the estimate is unbiased; ``rows=1`` measures the whole layer);
   * ``block``: EXL2's way, the squared error of the block's output over the calibration tokens
     with only this layer at the candidate (earlier layers of the block at the target);
   * ``fisher`` (default): the proxy times the layer's output sensitivity ``f = E ||dL/dy||^2 / out`` (the
     mean squared gradient of the calibration loss with respect to the layer's output, from one
     backward pass of the unquantized model): to second order the loss grows by
     ``f / 2 x tokens x proxy`` when the Fisher of the output is taken as ``f`` times the identity,
     so layers whose outputs the loss is more sensitive to get more bits (on the reference model it
     ranks single-layer perplexity damage best of the three and allocates best: README);
3. allocation over those points (:func:`pvq.solvers.allocate.allocate`: Lagrangian on each
   layer's lower convex hull, then a fill), with the budget ``R`` x the quantized weights;
4. a new plan (each layer's codec at its chosen rate) and a record of why, which the report,
   the checkpoint (``quantization_config["allocation"]``) and ``pvq eval --json`` carry.

The driver then quantizes with that plan as in a uniform run. Expert stacks (MoE) are refused.
"""

from __future__ import annotations

import copy
import json
import math
import time
import zlib
from dataclasses import asdict, dataclass, replace

import torch

from pvq.codecs import VectorCodec, codec_to_config
from pvq.errors import PvqError, QuantizeError
from pvq.solvers import quantize_linear
from pvq.solvers.allocate import RatePoint, allocate, lower_hull

from .capture import (block_linears, capture_block_inputs, collect_hessians, linear_stages, norm_output_hessian,
                      run_block)
from .plan import LayerPlan, QuantizePlan, embedding_plan, head_plan
from .qlinear import QuantizedLinear
from .structure import decoder_blocks, embedding_as_linear, head_input_norm, linear_weight

__all__ = ["METRICS", "AllocateConfig", "Candidate"]

METRICS = ("proxy", "block", "fisher")


@dataclass(frozen=True)
class Candidate:
    """One measured setting of one layer: the ladder rate asked for, the codec it built, the
    layer's stored bits at it (measured; scaled from the measured rows for ``rows < 1``) and the distortion."""

    rate: float
    codec: VectorCodec
    stored_bits: int
    distortion: float
    proxy: float | None = None  # the solver's proxy loss of the whole layer (block metric only; benchmarks)


@dataclass(frozen=True)
class AllocateConfig:
    """How ``--allocate`` measures and allocates (validated at construction; the target is the run's ``bits``).

    metric: ``proxy`` (the solver's Hessian-weighted error), ``block`` (the block's output error) or
        ``fisher`` (the proxy weighted by the loss's sensitivity to the layer's output).
    min_bits / max_bits: per-layer bounds of the candidate ladder (default: target - 1, target + 1).
    step: spacing of the candidate ladder in bits per weight.
    rows: fraction of each layer's output rows the proxy metric solves per candidate (1: all).
    count_embeddings: the budget is the target times the quantized weights plus the input embedding
        and the LM head (tied: once), and those two spend their bits from it ("fits in N GB" for the
        whole model): kept at the model's dtype, or the head, with ``quantize_head``, at its codec's
        rate; off: the budget covers the quantized block weights alone.
    kept_bits: bits per weight of those kept tensors as saved (``pvq quantize`` sets the source
        checkpoint's dtype); None: the dtype the model's config names, else the tensors' own.
    size_tables: with ``count_embeddings``, the tables quantized by ``quantize_embedding`` /
        ``quantize_head`` are sized by the allocation too (measured by the proxy under their own Hessian,
        weighted like the layers); off: they take ``config.bits`` and are counted at their codec's rate.
        Measured worse than off on the reference model (session 12: 17.839 against 14.953 at 1.97 bits
        per weight over the whole model), so off by default.
    """

    metric: str = "fisher"
    min_bits: float | None = None
    max_bits: float | None = None
    step: float = 0.25
    rows: float = 0.125
    count_embeddings: bool = False
    kept_bits: int | None = None
    size_tables: bool = False

    def __post_init__(self):
        if self.metric not in METRICS:
            raise QuantizeError(f"allocation metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        for name in ("min_bits", "max_bits"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 16):
                raise QuantizeError(f"--{name.replace('_', '-')} must be a rate in (0, 16) bits per weight, got {v!r}")
        if self.min_bits is not None and self.max_bits is not None and self.min_bits > self.max_bits:
            raise QuantizeError(f"--min-bits {self.min_bits} is above --max-bits {self.max_bits}")
        if isinstance(self.step, bool) or not isinstance(self.step, (int, float)) or not 0.01 <= self.step <= 8:
            raise QuantizeError(f"--allocate-step must be in [0.01, 8] bits, got {self.step!r}")
        if isinstance(self.rows, bool) or not isinstance(self.rows, (int, float)) or not 0 < self.rows <= 1:
            raise QuantizeError(f"--allocate-rows must be a fraction in (0, 1], got {self.rows!r}")
        if not isinstance(self.count_embeddings, bool):
            raise QuantizeError(f"count_embeddings must be True or False, got {self.count_embeddings!r}")
        if self.kept_bits is not None and (isinstance(self.kept_bits, bool) or self.kept_bits not in (8, 16, 32)):
            raise QuantizeError(f"kept_bits must be 8, 16 or 32, got {self.kept_bits!r}")
        if not isinstance(self.size_tables, bool):
            raise QuantizeError(f"size_tables must be True or False, got {self.size_tables!r}")
        if self.size_tables and not self.count_embeddings:
            raise QuantizeError("size_tables sizes the embedding and LM head inside the budget: it needs "
                                "count_embeddings (--allocate-count-embeddings)")

    def bounds(self, target: float) -> tuple[float, float]:
        if self.count_embeddings:  # the target covers the kept embeddings too: the layers' average is lower
            lo = self.min_bits if self.min_bits is not None else min(1.0, target)
            hi = self.max_bits if self.max_bits is not None else min(target + 1.0, 15.0)
            if lo > hi:
                raise QuantizeError(f"--min-bits {lo:g} is above --max-bits {hi:g}")
            return lo, hi
        lo = self.min_bits if self.min_bits is not None else max(target - 1.0, min(1.0, target))
        hi = self.max_bits if self.max_bits is not None else min(target + 1.0, 15.0)
        if not lo <= target <= hi:
            raise QuantizeError(f"the target of {target:g} bits per weight is outside --min-bits {lo:g} .. "
                                f"--max-bits {hi:g}; move the bounds around the target")
        return lo, hi

    def ladder(self, target: float) -> list[float]:
        """The candidate rates: from ``min_bits`` to ``max_bits`` every ``step``, the target and both ends included."""
        lo, hi = self.bounds(target)
        n = int(math.floor((hi - lo) / self.step + 1e-9))
        inside = {round(target, 6)} if lo <= target <= hi else set()
        return sorted({round(lo + k * self.step, 6) for k in range(n + 1)} | inside | {round(hi, 6)})

    def to_dict(self) -> dict:
        return asdict(self)

    # ------------------------------------------------------------ the work

    def base_plan(self, config, model) -> QuantizePlan:
        """The plan the measurement starts from (its codecs quantize the layers that later stages and
        blocks see): the uniform plan at the target, or, for a method with no codec at the target (a
        coarse ladder: e8 at 2.5 bits), the uniform plan at the highest ladder rate below the target
        that builds, under the target's rotation plan (its ``base_bits``). Raises the target's
        :class:`QuantizeError` when no rate builds."""
        try:
            return config.plan(model)
        except QuantizeError as err:
            first = err
        pinned = config.replace(rotation=config.rotation_plan)
        for r in sorted((r for r in self.ladder(config.bits) if r < config.bits), reverse=True):
            try:
                lower = pinned.replace(bits=r).plan(model)
            except QuantizeError:
                continue
            plan = QuantizePlan(config, lower.layers, lower.num_blocks, path=lower.path, rotation=lower.rotation,
                                base_bits=r)
            plan.notes = list(lower.notes) + [f"allocation: no {config.method} codec at {config.bits:g} bits per "
                                              f"weight; the measurement starts from the plan at {r:g}"]
            return plan
        raise first

    def check(self, config) -> None:
        """Refuse a run this allocation cannot measure (before any work): the ``block`` metric with tables to size."""
        if self.size_tables and (config.quantize_embedding or config.quantize_head) and self.metric == "block":
            raise QuantizeError("--allocate-metric block measures a block's output error, which the input embedding "
                                "and the LM head do not have: use fisher or proxy with --quantize-embedding / "
                                "--quantize-head and --allocate-count-embeddings")

    def tables(self, config, plan: QuantizePlan, model) -> list[LayerPlan]:
        """The plans of the tables the allocation sizes with the layers: with ``count_embeddings``, the input
        embedding (``quantize_embedding``) and the LM head (``quantize_head``); else none (they take
        ``config.bits``)."""
        if not self.size_tables:
            return []
        out = [embedding_plan(config, plan, model)] if config.quantize_embedding else []
        return out + ([head_plan(config, plan, model)] if config.quantize_head else [])

    def candidates(self, config, plan: QuantizePlan, extra: list[LayerPlan] = ()) -> dict[str, list[tuple[float, VectorCodec]]]:
        """Per layer (and per table of ``extra``), ``(rate, codec)`` of every ladder rate whose codec can be
        built, one per codec config (the lowest rate that builds it), the plan's target codec always among them."""
        if any(p.experts is not None for p in plan.layers):
            raise QuantizeError("--allocate does not handle expert stacks (MoE) yet; quantize this model without it")
        ladder = self.ladder(config.bits)
        built: dict[tuple, list[tuple[float, VectorCodec]]] = {}
        out = {}
        for p in [*plan.layers, *extra]:
            key = (p.dim, p.group_size)
            if key not in built:
                seen, cands = {_key(p.codec)}, [(config.bits if plan.base_bits is None else plan.base_bits, p.codec)]
                for r in ladder:
                    try:
                        codec = config.replace(bits=r).make_codec(p.dim, p.group_size)
                    except QuantizeError:
                        continue  # a rate this codec cannot reach at this D and G
                    if _key(codec) not in seen:
                        seen.add(_key(codec))
                        cands.append((r, codec))
                built[key] = sorted(cands, key=lambda c: c[0])
            out[p.name] = built[key]
        return out

    @torch.no_grad()
    def apply(self, model, calib_ids: torch.Tensor, plan: QuantizePlan, device: torch.device,
              batch_size: int = 8, say=print) -> tuple[QuantizePlan, dict]:
        """Measure every layer's candidates, allocate the budget, return (new plan, record)."""
        config = plan.config
        t0 = time.perf_counter()
        self.check(config)
        tables = self.tables(config, plan, model)
        cands = self.candidates(config, plan, tables)
        sized = [*plan.layers, *tables]  # what the allocation sizes
        weights = sum(p.out_features * p.in_features for p in sized)
        leave_out = {p.name for p in tables}
        head_rate = emb_rate = None  # tables quantized at config.bits, counted at their codec's rate
        if self.count_embeddings and config.quantize_head and not tables:
            head_rate = head_plan(config, plan, model).codec.nominal_bits_per_weight()
        if self.count_embeddings and config.quantize_embedding and not tables:
            emb_rate = embedding_plan(config, plan, model).codec.nominal_bits_per_weight()
        outside_weights, outside_bits = (embedding_bits(model, self.kept_bits, head_rate, emb_rate, leave_out)
                                         if self.count_embeddings else (0, 0))
        budget = int(math.floor(config.bits * (weights + outside_weights))) - outside_bits
        cheapest = sum(min(c.nominal_bits_per_weight() for _, c in cands[p.name]) * p.out_features * p.in_features
                       for p in sized)
        if cheapest > budget * 1.001:
            what = "kept embeddings and LM head" if head_rate is None and emb_rate is None else "embedding and LM head"
            kept = (f" after the {what} ({outside_weights:,} weights, {outside_bits:,} bits) "
                    f"take their share" if outside_weights else "")
            raise QuantizeError(f"the target of {config.bits:g} bits per weight leaves the quantized layers "
                                f"{max(budget, 0) / weights:.3f} bits per weight{kept}, below what the cheapest "
                                f"candidates reach ({cheapest / weights:.3f}); raise --bits or lower --min-bits")
        say(f"allocate: measuring {sum(len(v) for v in cands.values())} candidates of {len(sized)} layers "
            f"({self.metric} metric, rates {min(c[0] for v in cands.values() for c in v):g}.."
            f"{max(c[0] for v in cands.values() for c in v):g})")
        sensitivity = None
        if self.metric == "fisher":
            t = time.perf_counter()
            sensitivity = output_sensitivity(model, calib_ids, [p.name for p in sized], device, batch_size)
            say(f"allocate: output sensitivities of {len(sensitivity)} layers in {time.perf_counter() - t:.1f} s")
        points = measure(model, calib_ids, plan, cands, self, device, batch_size, say, sensitivity=sensitivity,
                         tables=tables)
        seconds = time.perf_counter() - t0
        names = [p.name for p in sized]
        try:
            a = allocate([[RatePoint(c.stored_bits, c.distortion) for c in points[n]] for n in names], budget)
        except PvqError as e:
            raise QuantizeError(f"allocation: {e}") from e
        layers, record_layers, table_codecs = [], {}, {}
        for p, j in zip(sized, a.choice):
            c = points[p.name][j]
            if p.name in leave_out:
                table_codecs[p.name] = c.codec
            else:
                layers.append(replace(p, codec=c.codec))
            record_layers[p.name] = _why(p, points[p.name], j, a.lam, config.bits)
        new = QuantizePlan(config, layers, plan.num_blocks, path=plan.path, rotation=plan.rotation,
                           table_codecs=table_codecs)
        new.notes = list(plan.notes)  # not the notes __post_init__ derived again
        overall = (a.bits + outside_bits) / (weights + outside_weights)
        record = {
            "target_bits": config.bits, **self.to_dict(), "ladder": self.ladder(config.bits),
            "budget_bits": budget, "predicted_bits": a.bits, "predicted_bits_per_weight": a.bits / weights,
            "embedding_weights": outside_weights, "embedding_bits": outside_bits,
            "predicted_overall_bits_per_weight": overall,
            "distortion": a.distortion, "lambda": a.lam, "measure_seconds": seconds, "layers": record_layers,
        }
        with_emb = f"; {overall:.4f} with the embeddings and LM head" if self.count_embeddings else ""
        say(f"allocate: {a.bits / weights:.4f} bits per weight predicted for a target of {config.bits:g}{with_emb} "
            f"(measured in {seconds:.1f} s); per layer:")
        for n, r in record_layers.items():
            say(f"  {n:<40} {r['bits_per_weight']:.3f} b/w  {r['why']}")
        return new, record


def embedding_bits(model, bits_per_weight: int | None = None, head_bits_per_weight: float | None = None,
                   embedding_bits_per_weight: float | None = None, leave_out: set[str] = frozenset()
                   ) -> tuple[int, int]:
    """(weights, bits) of the input embedding and the LM head (one tensor when tied), kept at
    ``bits_per_weight``, else the dtype the model's config names, else their own; an (untied) head to be
    quantized (``head_bits_per_weight``: its codec's rate) and a quantized embedding
    (``embedding_bits_per_weight``: its stored rate) at those rates; the modules named in ``leave_out``
    (sized by the allocation itself) not at all."""
    seen, n, bits = set(), 0, 0
    named = getattr(model.config, "dtype", None) or getattr(model.config, "torch_dtype", None)
    if isinstance(named, str):
        named = getattr(torch, named, None)
    names = {id(m): n for n, m in model.named_modules()}
    for mod, quantized in ((model.get_input_embeddings(), embedding_bits_per_weight),
                           (model.get_output_embeddings(), head_bits_per_weight)):
        if names.get(id(mod)) in leave_out:
            continue
        if isinstance(mod, QuantizedLinear) and quantized is not None:  # no weight tensor: its table's size
            n += mod.num_weights
            bits += math.ceil(mod.num_weights * quantized)
            continue
        w = getattr(mod, "weight", None)
        if w is None or id(w) in seen:
            continue
        seen.add(id(w))
        each = bits_per_weight or 8 * (named.itemsize if isinstance(named, torch.dtype) else w.element_size())
        n += w.numel()
        bits += math.ceil(w.numel() * quantized) if quantized is not None else w.numel() * each
    return n, bits


def _key(codec: VectorCodec) -> str:
    return json.dumps(codec_to_config(codec), sort_keys=True, default=str)


def _why(p: LayerPlan, cands: list[Candidate], j: int, lam: float, target: float) -> dict:
    """The chosen point of one layer and the reason, in the hull's terms."""
    w = p.out_features * p.in_features
    pts = [RatePoint(c.stored_bits, c.distortion) for c in cands]
    hull = lower_hull(pts)
    c = cands[j]
    uniform = next(x for x in cands if x.rate == target) if any(x.rate == target for x in cands) else None
    if j not in hull:
        why = "fill: the best single move that fit the bits left after the hull sweep"
    else:
        k = hull.index(j)
        into = None if k == 0 else (pts[hull[k - 1]].distortion - pts[j].distortion) / (pts[j].bits - pts[hull[k - 1]].bits)
        up = None if k == len(hull) - 1 else (pts[j].distortion - pts[hull[k + 1]].distortion) / (pts[hull[k + 1]].bits - pts[j].bits)
        parts = []
        parts.append("lowest candidate" if into is None else f"the step into it saves {into * w:.3g} per b/w")
        parts.append("highest candidate" if up is None else f"the next step saves {up * w:.3g} per b/w")
        why = "; ".join(parts) + f" (lambda {lam * w:.3g})"
    return {
        "rate": c.rate, "bits_per_weight": c.stored_bits / w, "distortion": c.distortion,
        "uniform_distortion": None if uniform is None else uniform.distortion, "codec": c.codec.describe(),
        "candidates": [[x.stored_bits / w, x.distortion] for x in cands], "why": why,
    }


@torch.no_grad()
def output_sensitivity(model, calib_ids: torch.Tensor, names: list[str], device: torch.device,
                       batch_size: int = 8) -> dict[str, float]:
    """``{name: E ||dL/dy||^2 / out}`` per named linear (or the input embedding): the mean over calibration
    tokens of the squared gradient of the next-token loss (summed over tokens) with respect to the layer's
    output ``y``, per output feature, from backward passes of ``model`` as it is (the model is not changed)."""
    if any(t.is_meta for t in model.parameters()):
        raise QuantizeError("the fisher allocation metric runs a backward pass of the whole model, and this model's "
                            "weights are not all in memory (a streamed skeleton); use --allocate-metric proxy")
    mods = {n: model.get_submodule(n) for n in names}
    sums = dict.fromkeys(names, 0.0)
    tokens = 0
    handles = []

    def watch(n):
        def fwd(m, inp, out):
            if out.requires_grad:
                out.register_hook(lambda g: sums.__setitem__(n, sums[n] + float(g.double().pow(2).sum())))
        return fwd

    emb = model.get_input_embeddings()
    emb_name = next((n for n in names if mods[n] is emb), None)

    def leaf(m, inp, out):  # the embedding output as a leaf that needs a gradient: the whole graph below it
        out = out.detach().requires_grad_(True)
        if emb_name is not None:
            out.register_hook(lambda g: sums.__setitem__(emb_name, sums[emb_name] + float(g.double().pow(2).sum())))
        return out

    was = [(prm, prm.requires_grad) for prm in model.parameters()]
    was_device = {n: t.device for n, t in model.named_parameters()}
    model.to(device)
    try:
        for prm, _ in was:
            prm.requires_grad_(False)
        handles = [mods[n].register_forward_hook(watch(n)) for n in names if n != emb_name]
        handles.append(model.get_input_embeddings().register_forward_hook(leaf))
        with torch.enable_grad():
            for start in range(0, calib_ids.shape[0], batch_size):
                ids = calib_ids[start:start + batch_size].to(device)
                loss = model(input_ids=ids, labels=ids).loss * (ids.shape[0] * (ids.shape[1] - 1))
                loss.backward()
                tokens += ids.shape[0] * ids.shape[1]
    except torch.OutOfMemoryError as e:
        raise QuantizeError(f"the fisher allocation metric needs the whole model and a backward pass of {batch_size} "
                            f"windows on {device}, which ran out of memory; lower --batch-size or use "
                            "--allocate-metric proxy") from e
    finally:
        for h in handles:
            h.remove()
        for prm, rg in was:
            prm.requires_grad_(rg)
        if len(set(was_device.values())) == 1:
            model.to(next(iter(was_device.values())))
    out_features = {n: m.embedding_dim if m is emb else linear_weight(m).shape[0] for n, m in mods.items()}
    return {n: sums[n] / tokens / out_features[n] for n in names}


def measure(model, calib_ids, plan: QuantizePlan, cands: dict, alloc: AllocateConfig, device: torch.device,
            batch_size: int, say, keep: dict | None = None,
            sensitivity: dict[str, float] | None = None, tables: list[LayerPlan] = ()) -> dict[str, list[Candidate]]:
    """Every layer's candidates measured block by block on copies of the blocks (the model is not changed).
    ``keep``: when given, receives ``{(name, rate): dequantized weight [out, in]}`` of whole-layer solves.
    ``sensitivity`` (the ``fisher`` metric): per layer name, the factor its proxy is weighted by.
    ``tables``: plans of the input embedding (block -1: its rows' squared error per token, the identity
    Hessian's proxy over the vocabulary) and the LM head (after the last block: the proxy under the final
    norm's outputs), measured with the proxy metric."""
    config = plan.config
    _, blocks = decoder_blocks(model)
    out: dict[str, list[Candidate]] = {}

    def weigh(name):
        if sensitivity is not None:
            out[name] = [replace(c, distortion=c.distortion * sensitivity[name]) for c in out[name]]

    table_alloc = replace(alloc, metric="proxy")
    for p in (t for t in tables if t.block < 0):  # the input embedding: rows as a layer's under H = I
        lin = embedding_as_linear(model.get_submodule(p.name))
        eye = torch.eye(p.in_features, dtype=torch.float64, device=device)
        out[p.name] = [replace(c, distortion=c.distortion / p.out_features)  # a token's row, on average
                       for c in _measure_layer(None, -1, lin, eye, p, cands[p.name], table_alloc, config, [], device)]
        weigh(p.name)
    batches = capture_block_inputs(model, calib_ids, device, batch_size)
    last = max(p.block for p in plan.layers)
    if any(t.block >= 0 for t in tables):  # the head reads the last block's output
        last = plan.num_blocks - 1
    for i, block in enumerate(blocks):
        if i > last:
            break
        blk = copy.deepcopy(block).to(device)
        prefix = f"{plan.path}.{i}."
        mine = {p.name[len(prefix):]: p for p in plan.by_block(i)}
        if mine:
            t = time.perf_counter()
            for stage in linear_stages(blk, batches[0], i, list(mine), config.sequential):
                accs = collect_hessians(blk, batches, i, stage, device)
                mods = block_linears(blk, stage)
                for n in stage:
                    p = mine[n]
                    out[p.name] = _measure_layer(blk, i, mods[n], accs.pop(n).hessian(), p, cands[p.name], alloc,
                                                 config, batches, device, keep)
                    weigh(p.name)
            say(f"allocate: block {i} measured in {time.perf_counter() - t:.1f} s")
        for b in batches:
            b.hidden = run_block(blk, b, i)
        del blk
    for p in (t for t in tables if t.block >= 0):  # the LM head under E[x x^T] of the final norm's outputs
        _, head, norm = head_input_norm(model)
        h = norm_output_hessian(norm, batches, p.in_features, device).hessian()
        out[p.name] = _measure_layer(None, -1, head, h, p, cands[p.name], table_alloc, config, [], device)
        weigh(p.name)
    return out


def _measure_layer(blk, i, mod, h, p: LayerPlan, cands, alloc: AllocateConfig, config, batches, device,
                   keep: dict | None = None) -> list[Candidate]:
    """Measure one layer's candidates, then leave it quantized at the target in the block copy."""
    solver = config.solver_config()
    weight = linear_weight(mod)
    original = weight.detach().clone()
    w = original.to(device=device, dtype=torch.float64)
    wr, hr = (w, h) if p.rotation is None else (p.rotation.rotate_weight(w), p.rotation.rotate_hessian(h.to(device)))
    out_f = p.out_features
    dense = {}  # codec key -> dequantized weight [out, in] (whole-layer solves)

    def solve_all(codec):
        try:
            res = quantize_linear(wr, hr, codec, None, solver)
        except PvqError as e:
            raise QuantizeError(f"{p.name}: {e}") from e
        q = res.rotated_weight.to(torch.float64)
        return res, (q if p.rotation is None else p.rotation.unrotate_weight(q))

    result = []
    if alloc.metric in ("proxy", "fisher"):
        n = out_f if alloc.rows >= 1 else min(out_f, max(16, math.ceil(alloc.rows * out_f)))
        g = torch.Generator().manual_seed(zlib.crc32(p.name.encode()) & 0x7FFFFFFF)
        idx = torch.sort(torch.randperm(out_f, generator=g)[:n]).values.to(wr.device)
        sub = wr.index_select(0, idx)
        for rate, codec in cands:
            if n == out_f:
                res, dq = solve_all(codec)
                dense[_key(codec)] = dq
            else:
                try:
                    res = quantize_linear(sub, hr, codec, None, solver)
                except PvqError as e:
                    raise QuantizeError(f"{p.name}: {e}") from e
            data = sum(t.numel() * t.element_size() * 8 for t in res.codec.data_tensors().values())
            bits = int(round((res.stored_bits - data) * out_f / n)) + data
            result.append(Candidate(rate, codec, bits, float(res.proxy_loss) * out_f / n))
    else:  # block: the block's output error with this layer at each candidate
        ref = [run_block(blk, b, i) for b in batches]
        tokens = sum(r.shape[0] * r.shape[1] for r in ref)
        for rate, codec in cands:
            res, dq = solve_all(codec)
            dense[_key(codec)] = dq
            weight.copy_(dq.to(weight.dtype))
            err = sum(float((run_block(blk, b, i) - r).double().pow(2).sum()) for b, r in zip(batches, ref))
            weight.copy_(original)
            result.append(Candidate(rate, codec, res.stored_bits, err / tokens, float(res.proxy_loss)))
            if keep is not None:
                keep[(p.name, rate)] = dq.float().cpu()
    key = _key(p.codec)
    if key not in dense:
        _, dense[key] = solve_all(p.codec)
    weight.copy_(dense[key].to(weight.dtype))  # later stages and blocks see this layer at the target
    return result
