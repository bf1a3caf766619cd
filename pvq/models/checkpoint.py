"""Saving and loading quantized checkpoints (the format: :mod:`pvq.models.format`).

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

from pvq.errors import CheckpointError, QuantizeError

from .format import (
    check_tensors,
    quantization_config_dict,
    read_quantization_config,
    replace_linears,
    safetensors_files,
)
from .hf_quantizer import register

__all__ = ["load_quantized", "save_quantized"]



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
        check_tensors(tmp, qdict)
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
    check_tensors(path, qdict)
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
    for f in safetensors_files(path):
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


