"""Quantized checkpoints: safetensors + ``config.json`` with a ``quantization_config``.

Layout of a checkpoint directory (what ``save_pretrained`` writes, plus):

* ``model.safetensors`` (or shards + index): every tensor of the model, the
  quantized linears as ``<module>.packed_<key>`` (uint8 codes, any codebook),
  ``<module>.scales`` (fp16) and ``<module>.bias``; never pickle.
* ``config.json`` with ``quantization_config``::

    {"quant_method": "pvq", "method": "pvq"|"gptq"|..., "bits": target,
     "bits_per_weight": measured, "config": QuantizeConfig.to_dict(),
     "modules": {name: {"codec": codec config, "in_features", "out_features",
                        "bias", "rotation": {"out_seed", "in_seed"} | null,
                        "tensors": {key: {"shape", "dtype"}}, "bits_per_weight"}},
     "pvq_version": ..., "format_version": 1}

* tokenizer files when a tokenizer is given, ``quantize_report.json`` when a
  :class:`~pvq.models.driver.QuantizeReport` is given.

:func:`save_quantized` writes into a temporary directory beside the target and
renames it into place at the end, so an interrupted run never leaves a
loadable half-written checkpoint at the target. :func:`load_quantized` loads
through ``transformers`` (``AutoModelForCausalLM.from_pretrained`` after the
``pvq`` quantizer is registered), or directly (``via="direct"``) without the
transformers quantizer machinery.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from pathlib import Path

import torch
from torch import nn

from .methods import QuantizeConfig, QuantizeError
from .qlinear import QuantizedLinear, buffer_name

__all__ = [
    "FORMAT_VERSION",
    "QUANT_METHOD",
    "load_quantized",
    "quantization_config_dict",
    "quantized_modules",
    "save_quantized",
]

QUANT_METHOD = "pvq"
FORMAT_VERSION = 1


def quantized_modules(model: nn.Module) -> dict[str, QuantizedLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def quantization_config_dict(model: nn.Module, quant_config) -> dict:
    """The ``quantization_config`` of a quantized model (see the module docstring)."""
    from pvq import __version__

    config = _as_config(quant_config)
    mods = quantized_modules(model)
    if not mods:
        raise QuantizeError("the model holds no QuantizedLinear modules; quantize it first (pvq.models.quantize_model)")
    bits = sum(m.stored_bits() for m in mods.values())
    weights = sum(m.num_weights for m in mods.values())
    return {
        "quant_method": QUANT_METHOD,
        "method": config.method,
        "bits": config.bits,
        "bits_per_weight": bits / weights,
        "stored_bits": bits,
        "num_weights": weights,
        "config": config.to_dict(),
        "modules": {n: m.layer_config() for n, m in mods.items()},
        "pvq_version": __version__,
        "format_version": FORMAT_VERSION,
    }


def _as_config(quant_config) -> QuantizeConfig:
    if isinstance(quant_config, QuantizeConfig):
        return quant_config
    cfg = getattr(quant_config, "config", None)  # a QuantizeReport
    if isinstance(cfg, QuantizeConfig):
        return cfg
    if isinstance(quant_config, dict):
        return QuantizeConfig.from_dict(quant_config)
    raise QuantizeError(
        f"quant_config must be a QuantizeConfig, a QuantizeReport or a dict, got {type(quant_config).__name__}"
    )


# ---------------------------------------------------------------- save


def save_quantized(
    model: nn.Module, out_dir: str | Path, quant_config, tokenizer=None, *, overwrite: bool = False
) -> Path:
    """Write a quantized model to ``out_dir`` atomically; returns the directory.

    quant_config: the :class:`QuantizeConfig` (or the :class:`QuantizeReport`,
        which is also written as ``quantize_report.json``).
    overwrite: replace an existing ``out_dir`` (otherwise an existing
        non-empty directory is an error).
    """
    out_dir = Path(out_dir)
    qdict = quantization_config_dict(model, quant_config)
    if out_dir.exists() and not out_dir.is_dir():
        raise QuantizeError(f"{str(out_dir)!r} exists and is not a directory; choose another output path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise QuantizeError(f"{str(out_dir)!r} exists and is not empty; choose another output path or pass overwrite=True")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        config = getattr(model, "config", None)
        if config is None or not hasattr(model, "save_pretrained"):
            raise QuantizeError("save_quantized needs a transformers PreTrainedModel (with .config and .save_pretrained)")
        config.quantization_config = qdict
        model.save_pretrained(tmp)
        if any(tmp.glob("*.bin")) or not (any(tmp.glob("*.safetensors"))):
            raise QuantizeError("save_pretrained did not write safetensors; refusing a pickle checkpoint")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        report = quant_config if hasattr(quant_config, "to_dict") and hasattr(quant_config, "layers") else None
        if report is not None:
            (tmp / "quantize_report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        _check_tensors(tmp, qdict)
        _fsync_tree(tmp)
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename ``tmp`` to ``out_dir``; an existing target is moved aside first and removed after."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:12]}"
        os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- checks


def _safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / n for n in names]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    raise QuantizeError(f"{str(path)!r} holds no model.safetensors (or index); not a pvq checkpoint")


def _tensor_headers(path: Path) -> dict[str, tuple[list[int], str]]:
    from safetensors import safe_open

    out = {}
    for f in _safetensors_files(path):
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                sl = h.get_slice(k)
                out[k] = (list(sl.get_shape()), sl.get_dtype())
    return out


_ST_DTYPES = {"U8": "uint8", "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64",
              "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}


def _check_tensors(path: Path, qdict: dict) -> None:
    """Every stored tensor that the config names exists with the configured shape and dtype."""
    headers = _tensor_headers(path)
    problems = []
    for name, cfg in qdict["modules"].items():
        for key, spec in cfg["tensors"].items():
            full = f"{name}.{buffer_name(key)}"
            if full not in headers:
                problems.append(f"{full} missing")
                continue
            shape, dt = headers[full]
            if shape != list(spec["shape"]) or _ST_DTYPES.get(dt, dt) != spec["dtype"]:
                problems.append(f"{full} is {dt}{shape}, config says {spec['dtype']}{spec['shape']}")
    if problems:
        raise QuantizeError(
            "the checkpoint does not match its quantization_config: " + "; ".join(problems[:8])
            + ("" if len(problems) <= 8 else f" (and {len(problems) - 8} more)")
        )


def read_quantization_config(path: str | Path) -> dict:
    """The ``quantization_config`` of a checkpoint directory (checked for pvq format)."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise QuantizeError(f"{str(path)!r} has no config.json; not a checkpoint directory")
    q = json.loads(cfg_file.read_text()).get("quantization_config")
    if not q or q.get("quant_method") != QUANT_METHOD:
        raise QuantizeError(f"{str(path)!r} is not a pvq-quantized checkpoint (no quantization_config with quant_method 'pvq')")
    if int(q.get("format_version", 0)) > FORMAT_VERSION:
        raise QuantizeError(
            f"{str(path)!r} uses pvq checkpoint format {q.get('format_version')}, newer than this pvq "
            f"({FORMAT_VERSION}); upgrade pvq"
        )
    return q


# ---------------------------------------------------------------- load


def load_quantized(
    path: str | Path, device: torch.device | str | None = None, *, via: str = "transformers", dtype=None
) -> nn.Module:
    """Load a pvq checkpoint as a causal LM with :class:`QuantizedLinear` modules.

    via: ``"transformers"`` (``AutoModelForCausalLM.from_pretrained`` with the
        registered ``pvq`` quantizer; falls back to ``"direct"`` with a warning
        if the installed transformers cannot) or ``"direct"`` (build the model
        from its config, swap in the quantized modules, load the safetensors).
    device: move the model there after loading (default: stay on CPU).
    dtype: model dtype (default: the checkpoint config's).
    """
    path = Path(path)
    qdict = read_quantization_config(path)
    _check_tensors(path, qdict)
    if via not in ("transformers", "direct"):
        raise QuantizeError(f"via must be 'transformers' or 'direct', got {via!r}")
    model = None
    if via == "transformers":
        try:
            model = _load_transformers(path, dtype)
        except QuantizeError:
            raise
        except Exception as e:  # an API this transformers version lacks
            warnings.warn(
                f"loading {str(path)!r} through transformers failed ({type(e).__name__}: {e}); "
                "loading it directly instead",
                stacklevel=2,
            )
    if model is None:
        model = _load_direct(path, qdict, dtype)
    model.eval()
    if device is not None:
        model.to(device)
    return model


def _load_transformers(path: Path, dtype) -> nn.Module:
    from transformers import AutoModelForCausalLM

    from .hf_quantizer import register

    register()
    kwargs = {} if dtype is None else {"dtype": dtype}
    return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)


def _config_dtype(config) -> torch.dtype:
    dt = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    if isinstance(dt, str):
        dt = getattr(torch, dt)
    return dt


def _load_direct(path: Path, qdict: dict, dtype) -> nn.Module:
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(path))
    dtype = dtype or _config_dtype(config)
    qc = config.quantization_config
    del config.quantization_config  # build a plain model, then swap the quantized modules in
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    config.quantization_config = qc
    replace_linears(model, qdict)
    state = {}
    for f in _safetensors_files(path):
        state.update(load_file(str(f)))
    result = model.load_state_dict(state, strict=False)
    tied = set(_tied_keys(model))
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise QuantizeError(
            f"checkpoint {str(path)!r} does not match its model config: missing {missing[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}"
        )
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    model.is_quantized = True
    return model


def _tied_keys(model: nn.Module) -> list[str]:
    keys = getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or {}
    if isinstance(keys, dict):
        return list(keys.keys())
    return list(keys)


def replace_linears(model: nn.Module, qdict: dict) -> None:
    """Swap each ``nn.Linear`` named in ``qdict["modules"]`` for an empty :class:`QuantizedLinear`
    (on the linear's device, bias in its dtype)."""
    for name, cfg in qdict["modules"].items():
        try:
            old = model.get_submodule(name)
        except AttributeError as e:
            raise QuantizeError(f"quantized module {name!r} of the checkpoint is not in the model") from e
        if isinstance(old, QuantizedLinear):
            continue
        if not isinstance(old, nn.Linear):
            raise QuantizeError(f"module {name!r} is {type(old).__name__}, expected nn.Linear to replace")
        if (old.in_features, old.out_features) != (cfg["in_features"], cfg["out_features"]):
            raise QuantizeError(
                f"module {name!r} is [{old.out_features}x{old.in_features}] in the model, "
                f"[{cfg['out_features']}x{cfg['in_features']}] in the quantization_config"
            )
        q = QuantizedLinear.from_layer_config(cfg, bias_dtype=old.weight.dtype, device=old.weight.device)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, q)

