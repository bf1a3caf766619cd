"""End-to-end runs behind the CLI: load, calibrate, quantize, save, evaluate, demo.

Every run validates its input (model, method, rate, calibration text, output
path) before the long work starts, and returns plain dicts for ``--json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from .. import kernels  # noqa: F401  (registers the kernel backends: loaded models run through them)
from ..errors import PvqError
from ..models import (
    QuantizeConfig,
    QuantizedLinear,
    QuantizeError,
    calibration_batches,
    load_quantized,
    load_text,
    quantize_model,
    resolve_device,
    save_quantized,
    tokenize_text,
)
from ..models import bits_per_activation, keep_stored_on_host, runtime_tensor_list, set_backend
from ..models.checkpoint import prepare_output
from ..models.qlinear import dtype_name
from ..models.distributed import init_from_env
from ..models.offload import PLACEMENTS
from ..models.resume import WorkDir, model_fingerprint, run_identity
from ..models.streaming import BlockStore, open_streamed, peak_memory, streamable, write_streamed
from ..models.format import block_rate, embedding_bits_per_weight, head_bits_per_weight, online_rotations_per_block
from ..models.rotation_plan import model_rotation
from ..models.coding import decode_entropy_coded, entropy_code_model
from ..models.reference import CALIB_TEXT, HELDOUT_TEXT, resolve_model
from .perplexity import check_windows, perplexity

CALIB_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""Dtypes a quantize run can load and calibrate the model in (``--calib-dtype``; also ``source``)."""

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# ---------------------------------------------------------------- loading


def is_pvq_checkpoint(path: str | Path) -> bool:
    """True if ``path`` is a directory whose config.json has a pvq quantization_config."""
    import json

    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    qc = json.loads(cfg.read_text()).get("quantization_config") or {}
    return qc.get("quant_method") == "pvq"


def model_config(name_or_path: str | None):
    """The transformers config of a model or checkpoint (cheap: no weights), as a user error when missing."""
    from transformers import AutoConfig

    source = resolve_model(name_or_path)
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise QuantizeError(
            f"could not load model {source!r} ({type(err).__name__}: {str(err).splitlines()[0]}); "
            "give a local directory with config.json and weights, or a hub id this machine can reach"
        ) from err


def model_context(config) -> int | None:
    """The longest context the model was built for (``max_position_embeddings`` or its aliases)."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(config, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def config_dtype(config) -> torch.dtype | None:
    """The dtype a model's weights are stored in, from its config (None when not stated)."""
    dt = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dt, str):
        dt = getattr(torch, dt, None)
    return dt if isinstance(dt, torch.dtype) else None


def check_context(length: int, config, what: str) -> None:
    """Refuse a window longer than the model's context (``what`` names the flag)."""
    limit = model_context(config)
    if limit is not None and length > limit:
        raise QuantizeError(f"{what}={length} is longer than the model's context of {limit} tokens; "
                            f"use {what} <= {limit}")


def check_finite_weights(model) -> None:
    """Refuse a model with NaN or inf in any floating tensor, naming it (before any work)."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise QuantizeError(f"the model's tensor {name} holds {bad} non-finite value(s) (NaN or inf); "
                                "fix or re-download the checkpoint before quantizing or evaluating it")


def check_backend(backend: str | None) -> None:
    """Refuse an unknown runtime backend name before any loading."""
    from ..models import BACKENDS

    if backend is not None and backend not in BACKENDS:
        raise QuantizeError(f"unknown backend {backend!r}; choose one of: {', '.join(sorted(BACKENDS))}")


def load_model(name_or_path: str | None, dtype: torch.dtype = torch.float32, backend: str | None = None):
    """(model, tokenizer) from a hub id, a local directory or a pvq checkpoint (CPU, eval mode).

    ``None`` or ``"reference"`` is the embedded reference model. A plain model
    loads in ``dtype``; a pvq checkpoint in the dtype it was saved from, after
    its integrity check. ``backend`` names the runtime backend of its quantized layers
    (None: the best one for the device each forward runs on).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_backend(backend)
    source = resolve_model(name_or_path)
    try:
        if is_pvq_checkpoint(source):
            model = load_quantized(source)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as err:
        if isinstance(err, PvqError):
            raise
        raise QuantizeError(
            f"could not load model {source!r} ({type(err).__name__}: {str(err).splitlines()[0]}); "
            "give a local directory with config.json and weights, or a hub id this machine can reach"
        ) from err
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise QuantizeError(
            f"{source!r} has no usable tokenizer ({type(err).__name__}); save the model's tokenizer files "
            "(tokenizer.json, tokenizer_config.json) into that directory"
        ) from err
    model.eval()
    if backend is not None:
        set_backend(model, backend)
    # on an accelerator, stored codes that the runtime layout does not read wait in host memory
    keep_stored_on_host(model)
    return model, tokenizer


def eval_token_ids(text: str, tokenizer, max_tokens: int | None) -> torch.Tensor:
    """Token ids of the evaluation text, cut to ``max_tokens``."""
    ids = tokenize_text(text, tokenizer)
    if max_tokens is not None:
        if max_tokens < 2:
            raise QuantizeError(f"--eval-tokens must be at least 2, got {max_tokens}")
        ids = ids[:max_tokens]
    return ids


def _storage_bytes(tensors, device: torch.device | str | None) -> int:
    """Bytes of the storages behind ``tensors``, each counted once; with ``device``, only those on its type."""
    kind = None if device is None else torch.device(device).type
    seen, total = set(), 0
    for t in tensors:
        if t.numel() and (kind is None or t.device.type == kind):
            key = (t.untyped_storage().data_ptr(), t.device)
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
    return total


def model_memory_bytes(model, device: torch.device | str | None = None) -> int:
    """Bytes of every tensor the model holds: parameters, buffers and the runtime tensors of its
    quantized layers (dense caches, kernel tables), each storage counted once; with ``device``,
    only those on that device's type (``"cuda"``: what the model holds on the GPU)."""
    tensors = list(model.parameters()) + list(model.buffers())
    for m in model.modules():
        if isinstance(m, QuantizedLinear):
            tensors += runtime_tensor_list(m.runtime_tensors())
    return _storage_bytes(tensors, device)


def quantized_memory(model, device: torch.device | str | None = None) -> dict:
    """What the quantized layers hold against what they store: ``stored_bytes`` (their codes, codebooks and scales as
    the checkpoint holds them), ``held_bytes`` (every tensor of theirs, stored or built for running them: transcoded
    layouts, kernel tables, dense caches; each storage once; with ``device``, only those on that device's type) and
    ``model_bytes`` (:func:`model_memory_bytes`). Issue 22 caps a runtime layout's codes at 1.3x the stored bytes."""
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    held = [t for m in layers for t in [*m.stored_tensors().values(), *runtime_tensor_list(m.runtime_tensors())]]
    return {"stored_bytes": sum(m.stored_bits() // 8 for m in layers), "held_bytes": _storage_bytes(held, device),
            "model_bytes": model_memory_bytes(model, device)}


def linear_weight_bits(model, stored_bits: int | None = None) -> float:
    """Bits per weight of every weight of the decoder blocks: pvq layers from their stored tensors,
    the others (plain linears, Conv1D, routers, expert stacks) at ``stored_bits`` (the
    checkpoint's dtype width) or their in-memory dtype width (:func:`pvq.models.format.block_rate`)."""
    rate = block_rate(model, stored_bits)
    return rate["stored_bits"] / rate["num_weights"] if rate["num_weights"] else float("nan")


def _stored(name_or_path: str | None) -> int | None:
    source = resolve_model(name_or_path)
    if is_pvq_checkpoint(source):
        return None
    dtype = config_dtype(model_config(source))
    return dtype.itemsize * 8 if dtype is not None else None


# ---------------------------------------------------------------- quantize


@dataclass
class QuantizeRequest:
    """A ``pvq quantize`` run; checked by :meth:`check` before any work."""

    model: str | None
    config: QuantizeConfig
    calib: str | None = None  # file, directory or datasets name; default: the reference calib text
    output: str | None = None
    overwrite: bool = False
    device: str | None = None
    stream: bool = False  # read one decoder block at a time from a safetensors directory
    resume: bool = True  # with an output: keep finished blocks beside it and continue an interrupted run
    activations: str = "auto"  # where calibration activations live: auto, device, cpu, disk
    batch_size: int = 8  # calibration samples per forward pass
    allocate: object | None = None  # a pvq.models.allocation.AllocateConfig: per-layer rates averaging config.bits
    calib_dtype: str = "float32"  # the dtype the model is loaded and calibrated in: float32, bfloat16, float16, source

    def compute_dtype(self, source: torch.dtype | None) -> torch.dtype:
        """The torch dtype of ``calib_dtype`` (``source``: the checkpoint's own dtype, float32 when it names none)."""
        if self.calib_dtype == "source":
            return source or torch.float32
        return CALIB_DTYPES[self.calib_dtype]

    def check(self, log: Log = _quiet, probe_output: bool = True) -> tuple[torch.device, str]:
        """Everything that can be checked before loading the model: device, output path
        (probed, leftovers of interrupted runs cleaned), calibration text, context length.
        Returns (device, calibration text)."""
        device = resolve_device(self.device)
        if self.calib_dtype not in (*CALIB_DTYPES, "source"):
            raise QuantizeError(f"--calib-dtype must be one of {', '.join((*CALIB_DTYPES, 'source'))}, "
                                f"got {self.calib_dtype!r}")
        if self.stream:
            if self.output is None:
                raise QuantizeError("--stream needs --output (finished blocks are kept beside it)")
            if not streamable(resolve_model(self.model)):
                raise QuantizeError(f"--stream reads a local directory of safetensors weights; "
                                    f"{resolve_model(self.model)!r} is not one (drop --stream)")
            if self.config.lora_steps:
                raise QuantizeError("--stream cannot run LoRA recovery (it tunes the whole model); drop --lora-steps")
            if self.config.entropy_code:
                raise QuantizeError("--stream writes blocks as they finish and cannot entropy-code them yet: drop "
                                    "--entropy-code or --stream")
            if self.config.quantize_head:
                raise QuantizeError("--stream never loads the LM head into memory, so it cannot quantize it yet: "
                                    "drop --quantize-head or --stream")
            if self.config.quantize_embedding:
                raise QuantizeError("--stream never loads the input embedding into memory, so it cannot quantize it "
                                    "yet: drop --quantize-embedding or --stream")
            if self.allocate is not None:  # its measurement pass copies whole blocks of the model in memory
                raise QuantizeError("--stream cannot measure per-layer rates yet (--allocate copies blocks that a "
                                    "streamed run holds on the meta device): drop --allocate or --stream")
        if self.activations not in PLACEMENTS:
            raise QuantizeError(f"--activations must be one of {', '.join(PLACEMENTS)}, got {self.activations!r}")
        if self.allocate is not None:
            self.allocate.ladder(self.config.bits)  # the target inside --min-bits .. --max-bits
        if self.output is not None and probe_output:  # (False: another rank of a distributed run; rank 0 probes)
            prepare_output(self.output, self.overwrite, log)
        text = load_text(self.calib if self.calib else CALIB_TEXT)
        check_context(self.config.seq_len, model_config(self.model), "--seq-len")
        return device, text


def run_quantize(req: QuantizeRequest, log: Log = _quiet, progress: bool = True) -> tuple[object, object, dict]:
    """Quantize (and save if ``req.output``); returns (model, tokenizer, summary dict).

    Bad input fails before the model loads where it can be known then (device,
    output path, calibration text, context), else before any quantization work
    (non-finite weights, the plan against the model's layers).
    """
    parallel = init_from_env(resolve_device(req.device))  # under torchrun: this rank, on its device
    if parallel is not None:
        req = replace(req, device=str(parallel.device))
        if not parallel.is_main:
            log, progress = _quiet, False
    if parallel is None or parallel.is_main:
        device, text = req.check(log)
    else:  # the output path is rank 0's to check and clean
        device, text = req.check(probe_output=False)
    source_dtype = config_dtype(model_config(req.model))
    dtype = req.compute_dtype(source_dtype)  # forwards, captured activations; Hessians and solves stay float64
    source = None
    if req.stream:  # a skeleton on meta; blocks are read from the shards one at a time
        model, tokenizer, source = open_streamed(resolve_model(req.model), dtype=dtype)
    else:
        model, tokenizer = load_model(req.model, dtype=dtype)
        check_finite_weights(model)
    if req.allocate is not None and req.allocate.count_embeddings and source_dtype is not None:
        req = replace(req, allocate=replace(req.allocate, kept_bits=source_dtype.itemsize * 8))  # as saved
    # method, dims, groups and rates against this model, before any work
    req.config.plan(model) if req.allocate is None else req.allocate.base_plan(req.config, model)
    calib = calibration_batches(text, tokenizer, req.config.n_samples, req.config.seq_len, req.config.seed)
    work, main = None, parallel is None or parallel.is_main
    if req.output and not req.config.lora_steps:  # resumable: finished blocks beside the output
        ident = run_identity(req.config, model_fingerprint(resolve_model(req.model)), calib, device, req.batch_size)
        if parallel is not None:
            ident["world_size"] = parallel.world
        if dtype != torch.float32:  # (float32 runs keep the identity of runs made before the option)
            ident["calib_dtype"] = dtype_name(dtype)
        if main:
            work = WorkDir(req.output, ident, resume=req.resume, log=log)
        if parallel is not None:
            parallel.barrier()  # rank 0 has made (or refused) the work directory
        if not main:
            work = WorkDir(req.output, ident, reader=True)
    elif req.output:
        log("resume is off: LoRA recovery tunes blocks after they are quantized")
    store = BlockStore(work, source, dtype=dtype, write=main)
    try:
        report = quantize_model(model, calib, req.config, device=device, progress=progress, log=log, io=store,
                                activations=req.activations, scratch=None if work is None else work.path,
                                parallel=parallel, batch_size=req.batch_size, allocation=req.allocate)
    except BaseException:
        if work is not None:
            work.close()
        raise
    finally:
        store.close()
    if dtype != torch.float32:  # the Hessians came from these activations: the checkpoint's report says so
        report.notes.append(f"calibration: model loaded and calibration forwards run in "
                            f"{dtype_name(dtype)} (--calib-dtype {req.calib_dtype})")
    if source_dtype is not None:  # weights left unquantized are saved (and counted) in the source dtype
        report.recount_kept(source_dtype.itemsize * 8)
    summary = {
        "model": resolve_model(req.model),
        "method": req.config.method,
        "target_bits": req.config.bits,
        "bits_per_weight": report.bits_per_weight,
        "lm_head_bits_per_weight": None if report.head is None else report.head.bits_per_weight,
        "embedding_bits_per_weight": None if report.embedding is None else report.embedding.bits_per_weight,
        "quantized_fraction": report.quantized_fraction,
        "kept": sorted(report.kept),
        "bits_per_activation": bits_per_activation(model, source_dtype.itemsize * 8 if source_dtype else 16),
        "activation": None if req.config.activation_quant() is None else req.config.activation_quant().to_dict(),
        "seconds": report.seconds,
        "proxy_loss": report.proxy_loss,
        "rotation_plan": _rotation_plan_name(model),
        "rotation_blocks": _rotation_blocks(model),
        "online_rotations_per_block": online_rotations_per_block(model),
        "notes": list(report.notes),
        "output": None,
        "resumed_blocks": list(store.resumed),
        "streamed": bool(req.stream),
        "calib_dtype": dtype_name(dtype),
        "resident_peak_bytes": store.resident_peak if req.stream else None,
        **peak_memory(device),
        "rank": 0 if parallel is None else parallel.rank,
        "world_size": 1 if parallel is None else parallel.world,
    }
    if report.allocation is not None:
        summary["allocation"] = report.allocation
    if req.output and not main:
        parallel.barrier()  # rank 0 writes the checkpoint
        summary["output"] = str(req.output)
    elif req.output:
        try:
            if req.stream:
                write_streamed(model, store, req.output, report, tokenizer=tokenizer, overwrite=req.overwrite,
                               dtype=source_dtype, log=log)
            else:
                save_quantized(model, req.output, report, tokenizer=tokenizer, overwrite=req.overwrite,
                               dtype=source_dtype, log=log)
        except BaseException:
            if work is not None:
                work.close()
            raise
        if work is not None:
            work.remove()
        summary["output"] = str(req.output)
        if parallel is not None:
            parallel.barrier()
        summary["stored_bits_per_weight"] = (getattr(model.config, "quantization_config", None) or {}).get(
            "stored_bits_per_weight", summary["bits_per_weight"])
    else:
        summary["stored_bits_per_weight"] = stored_bits_per_weight(
            model, req.config.entropy_code, source_dtype.itemsize * 8 if source_dtype else None)
    return model, tokenizer, summary


def stored_bits_per_weight(model, entropy_code: bool, kept_bits: int | None = None) -> float:
    """Bits per block weight as they would be stored: with ``entropy_code`` every quantized layer is
    coded (and decoded back) to measure it; entropy-coded codecs (ecsq) count as stored anyway."""
    if entropy_code:
        entropy_code_model(model)
        try:
            rate = block_rate(model, kept_bits)
        finally:
            decode_entropy_coded(model)
    else:
        rate = block_rate(model, kept_bits)
    return rate["coded_bits"] / rate["num_weights"]


# ---------------------------------------------------------------- eval


def run_eval(
    model_or_dir: str | None,
    data: str | None = None,
    context: int = 512,
    stride: int = 512,
    max_tokens: int | None = None,
    device: str | None = None,
    progress: bool = False,
    tasks: str | list[str] | None = None,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    include_path: str | list[str] | None = None,
    backend: str | None = None,
) -> dict:
    """Perplexity and measured bits per weight of a model or pvq checkpoint, and, with ``tasks``,
    zero-shot accuracy through lm-evaluation-harness (under the ``"zeroshot"`` key).

    Device, windows, context, evaluation text, task names, their data and the
    options are checked before the model is loaded.
    """
    dev = resolve_device(device)
    check_backend(backend)
    check_windows(context, stride)
    check_context(context, model_config(model_or_dir), "--context")
    text = load_text(data if data else HELDOUT_TEXT)
    prepared = None
    if tasks:
        from .zeroshot import check_options, prepare_tasks

        check_options(limit, num_fewshot, batch_size)
        prepared = prepare_tasks(tasks, include_path=include_path)
    model, tokenizer = load_model(model_or_dir, backend=backend)
    check_finite_weights(model)
    ids = eval_token_ids(text, tokenizer, max_tokens)
    res = perplexity(model, ids, context=context, stride=stride, device=dev, progress=progress)
    stored = _stored(model_or_dir)
    out = {
        "model": resolve_model(model_or_dir),
        "perplexity": res.perplexity,
        "bits_per_weight": linear_weight_bits(model, stored),
        "lm_head_bits_per_weight": head_bits_per_weight(model),
        "embedding_bits_per_weight": embedding_bits_per_weight(model),
        "stored_bits_per_weight": stored_bits_per_weight(model, False, stored),
        "bits_per_activation": bits_per_activation(model, stored or next(model.parameters()).element_size() * 8),
        "tokens": res.tokens,
        "context": context,
        "stride": stride,
        "seconds": res.seconds,
        "dtype": dtype_name(next(model.parameters()).dtype),
        "backends": sorted({m.backend for m in model.modules() if isinstance(m, QuantizedLinear)} - {None}),
        "memory_bytes": model_memory_bytes(model, dev),
        "rotation_plan": _rotation_plan_name(model),
        "rotation_blocks": _rotation_blocks(model),
        "online_rotations_per_block": online_rotations_per_block(model),
    }
    if is_pvq_checkpoint(resolve_model(model_or_dir)):  # --allocate's plan, when the checkpoint has one
        from ..models import read_quantization_config

        alloc = read_quantization_config(resolve_model(model_or_dir)).get("allocation")
        if alloc is not None:
            out["allocation"] = alloc
    if prepared is not None:
        from .zeroshot import evaluate_zeroshot

        model.to(dev)
        out["zeroshot"] = evaluate_zeroshot(model, tokenizer, limit=limit, num_fewshot=num_fewshot,
                                            batch_size=batch_size, prepared=prepared)
    return out


def _rotation_blocks(model) -> list[int]:
    """The chunk sizes of the block-diagonal online rotations (``--rotation-block``); empty when every
    online rotation takes a layer's whole input."""
    return sorted({m.rotation.in_block for m in model.modules() if isinstance(m, QuantizedLinear)
                   and m.rotation is not None and m.rotation.in_block is not None})


def _rotation_plan_name(model) -> str:
    """``fused`` for a folded model, else ``layer`` when any quantized linear rotates, else ``none``."""
    if model_rotation(model) is not None:
        return "fused"
    return "layer" if any(isinstance(m, QuantizedLinear) and m.rotation is not None for m in model.modules()) else "none"


# ---------------------------------------------------------------- demo


@dataclass
class DemoConfig:
    """The demo grid: methods x rates on the reference model (or another model)."""

    model: str | None = None
    methods: tuple[str, ...] = ("pvq", "gptq", "rtn")
    bits: tuple[float, ...] = (2.0, 3.0, 4.0)
    eval_tokens: int | None = 32768
    context: int = 512
    n_samples: int = 64
    seq_len: int = 256
    seed: int = 0
    device: str | None = None
    plot: str | None = "demo.png"
    options: dict = field(default_factory=dict)
    zeroshot_task: str = "pvq_heldout"
    zeroshot_limit: int | None = 250  # items of the zero-shot task per row; 0: no zero-shot column
    zeroshot_batch_size: int = 8

    def __post_init__(self):
        if not self.bits or any(not (0 < b < 16) for b in self.bits):
            raise QuantizeError(f"rates must be in (0, 16) bits per weight, got {self.bits}")
        for m in self.methods:
            QuantizeConfig(method=m, bits=self.bits[0])  # raises for unknown methods
        resolve_device(self.device)
        check_windows(self.context, self.context)
        if self.zeroshot_limit is not None and self.zeroshot_limit < 0:
            raise QuantizeError(f"--zeroshot-limit must be 0 (no accuracy column) or more, got {self.zeroshot_limit}")


def _demo_zeroshot(cfg: DemoConfig, log: Log):
    """(score function, prepared tasks) for the demo's zero-shot column, or (None, None) without one."""
    if cfg.zeroshot_limit == 0:
        return None, None
    from .zeroshot import ZeroShotError, check_options, evaluate_zeroshot, prepare_tasks

    try:
        check_options(cfg.zeroshot_limit, None, cfg.zeroshot_batch_size)
        prepared = prepare_tasks(cfg.zeroshot_task)
    except ZeroShotError as err:
        if "needs lm-evaluation-harness" not in str(err):
            raise
        log(f"no zero-shot column: {err}")
        return None, None

    def score(model, tokenizer) -> dict:
        zs = evaluate_zeroshot(model, tokenizer, limit=cfg.zeroshot_limit, batch_size=cfg.zeroshot_batch_size,
                               seed=cfg.seed, prepared=prepared)
        m = zs["tasks"].get(cfg.zeroshot_task) or next(iter(zs["tasks"].values()))
        return {
            "accuracy": m.get("acc"),
            "accuracy_stderr": m.get("acc_stderr"),
            "accuracy_norm": m.get("acc_norm"),
            "accuracy_norm_stderr": m.get("acc_norm_stderr"),
            "zeroshot_items": m.get("items"),
            "zeroshot_seconds": zs["seconds"],
        }

    return score, prepared


def _zs_log(row: dict) -> str:
    if row.get("accuracy") is None:
        return ""
    return f", accuracy {row['accuracy']:.3f} (norm {row['accuracy_norm']:.3f})"


def run_demo(cfg: DemoConfig, log: Log = _quiet) -> dict:
    """Quantize with every method at every rate, evaluate each (perplexity, and zero-shot accuracy on
    ``cfg.zeroshot_task`` through lm-evaluation-harness), return the table (and plot it)."""
    score, _ = _demo_zeroshot(cfg, log)  # task and its data checked before any model loading
    model0, tokenizer = load_model(cfg.model)
    configs = [
        QuantizeConfig(method=m, bits=b, n_samples=cfg.n_samples, seq_len=cfg.seq_len, seed=cfg.seed, **cfg.options)
        for m in cfg.methods
        for b in cfg.bits
    ]
    for c in configs:  # every setting is checked against the model before the first quantization
        c.plan(model0)
    calib = calibration_batches(load_text(CALIB_TEXT), tokenizer, cfg.n_samples, cfg.seq_len, cfg.seed)
    ids = eval_token_ids(load_text(HELDOUT_TEXT), tokenizer, cfg.eval_tokens)
    state = {k: v.clone() for k, v in model0.state_dict().items()}
    t = time.perf_counter()
    base = perplexity(model0, ids, context=cfg.context, stride=cfg.context, device=cfg.device)
    results = [
        {
            "method": "none",
            "target_bits": None,
            "bits_per_weight": linear_weight_bits(model0, _stored(cfg.model)),
            "perplexity": base.perplexity,
            "quantize_seconds": 0.0,
            "eval_seconds": time.perf_counter() - t,
        }
    ]
    if score is not None:
        if cfg.device:
            model0.to(cfg.device)
        results[0].update(score(model0, tokenizer))
    log(f"none: perplexity {base.perplexity:.3f} on {base.tokens} tokens" + _zs_log(results[0]))
    for c in configs:
        model, _ = load_model(cfg.model)
        model.load_state_dict(state)
        report = quantize_model(model, calib, c, device=cfg.device, progress=False, log=None)
        t = time.perf_counter()
        ppl = perplexity(model, ids, context=cfg.context, stride=cfg.context, device=cfg.device)
        row = {
            "method": c.method,
            "target_bits": c.bits,
            "bits_per_weight": report.bits_per_weight,
            "perplexity": ppl.perplexity,
            "quantize_seconds": report.seconds,
            "eval_seconds": time.perf_counter() - t,
        }
        if score is not None:
            if cfg.device:
                model.to(cfg.device)
            row.update(score(model, tokenizer))
        results.append(row)
        log(
            f"{c.method:5s} {c.bits:.0f} bits: measured {report.bits_per_weight:.3f} bpw, perplexity "
            f"{ppl.perplexity:.3f}{_zs_log(row)} (quantize {report.seconds:.0f} s)"
        )
        del model
    out = {
        "model": resolve_model(cfg.model),
        "eval_tokens": int(ids.numel()),
        "context": cfg.context,
        "calibration": {"samples": cfg.n_samples, "seq_len": cfg.seq_len, "seed": cfg.seed},
        "results": results,
    }
    if score is not None:
        from .zeroshot import harness_version

        out["zeroshot"] = {"task": cfg.zeroshot_task, "limit": cfg.zeroshot_limit,
                           "harness": f"lm-eval {harness_version()}"}
    if cfg.plot:
        plot_demo(results, cfg.plot)
        out["plot"] = cfg.plot
    return out


def plot_demo(results: list[dict], path: str) -> None:
    """Perplexity against measured bits per weight, one line per method, the unquantized model dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method in dict.fromkeys(r["method"] for r in results if r["method"] != "none"):
        rows = sorted((r for r in results if r["method"] == method), key=lambda r: r["bits_per_weight"])
        ax.plot([r["bits_per_weight"] for r in rows], [r["perplexity"] for r in rows], marker="o", label=method)
    base = [r for r in results if r["method"] == "none"]
    if base:
        ax.axhline(base[0]["perplexity"], color="k", linestyle="--", label="unquantized (fp16)")
    ax.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter

    ax.yaxis.set_major_formatter(FormatStrFormatter("%.1f"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.1f"))
    ax.set_xlabel("bits per weight (measured from stored tensors)")
    ax.set_ylabel("held-out perplexity (log scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = [
    "DemoConfig",
    "QuantizeRequest",
    "load_model",
    "run_demo",
    "run_eval",
    "run_quantize",
]
