"""Saving and loading quantized checkpoints (the format: :mod:`pvq.models.format`).

:func:`save_quantized` writes into a temporary directory beside the target and
renames it into place at the end, so an interrupted run never leaves a
loadable half-written checkpoint at the target. :func:`load_quantized` loads
through ``transformers`` (``AutoModelForCausalLM.from_pretrained`` after the
``pvq`` quantizer is registered), or directly (``via="direct"``) without the
transformers quantizer machinery.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path

import torch
from torch import nn

from pvq.errors import CheckpointError, PvqError, QuantizeError

from .format import (
    INTEGRITY_KEY,
    integrity_record,
    quantization_config_dict,
    read_quantization_config,
    install_model_rotation,
    replace_linears,
    safetensors_files,
    verify_checkpoint,
)
from .coding import decode_entropy_coded, entropy_code_model
from .experts import QuantizedExperts
from .hf_quantizer import register
from .merging import has_merged_linears
from .qlinear import QuantizedEmbedding, QuantizedLinear

__all__ = ["cast_unquantized", "clean_leftovers", "load_quantized", "prepare_output", "save_quantized"]



# ---------------------------------------------------------------- output path

_TMP, _OLD = "tmp", "old"


def _sibling(out_dir: Path, kind: str) -> Path:
    return out_dir.parent / f".{out_dir.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(out_dir: Path) -> list[tuple[Path, str, int]]:
    """``(path, kind, pid)`` of the temporary and displaced directories of earlier runs on ``out_dir``."""
    found = []
    if not out_dir.parent.is_dir():
        return found
    prefix = f".{out_dir.name}."
    for p in out_dir.parent.iterdir():
        if not p.name.startswith(prefix):
            continue
        kind, _, rest = p.name[len(prefix):].partition("-")
        pid = rest.split("-", 1)[0]
        if kind in (_TMP, _OLD):
            found.append((p, kind, int(pid) if pid.isdigit() else -1))
    return found


def clean_leftovers(out_dir: str | Path, log=None) -> list[str]:
    """Clean what interrupted runs left beside ``out_dir``; returns one line per action.

    A temporary directory of a run that is no longer alive is removed. A displaced
    previous checkpoint (``.old``) is put back when ``out_dir`` is missing (the run
    died between its two renames), else removed.
    """
    out_dir = Path(out_dir)
    said = []
    for p, kind, pid in _leftovers(out_dir):
        if pid > 0 and pid != os.getpid() and _pid_alive(pid):
            continue  # another live run is writing
        if kind == _OLD and not out_dir.exists():
            os.replace(p, out_dir)
            said.append(f"restored the previous checkpoint {out_dir} from {p.name} (an earlier run was interrupted)")
        else:
            shutil.rmtree(p, ignore_errors=True)
            said.append(f"removed {p.name}, left by an interrupted run on {out_dir}")
    for line in said:
        (log or warnings.warn)(line)
    return said


def prepare_output(out_dir: str | Path, overwrite: bool = False, log=None) -> Path:
    """Check that a checkpoint can be written at ``out_dir`` before any work, and clean leftovers.

    Refuses (with what to change) a path that is a file, a non-empty directory
    without ``overwrite``, and a place where no directory can be created
    (read-only, under a file, ``/proc``): it creates and removes a probe
    directory beside the target.
    """
    out_dir = Path(out_dir)
    if str(out_dir).strip() == "":
        raise CheckpointError("the output path is empty; give a directory name")
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"{str(out_dir)!r} exists and is a file, not a checkpoint directory; "
                              "choose another output path (--overwrite replaces only checkpoint directories)")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise CheckpointError(f"{str(out_dir)!r} exists and is not empty; choose another output path "
                              "or pass --overwrite (overwrite=True)")
    if out_dir.is_dir() and overwrite and any(out_dir.iterdir()) and not (out_dir / "config.json").is_file():
        raise CheckpointError(f"{str(out_dir)!r} is a non-empty directory that is not a checkpoint; "
                              "--overwrite replaces only checkpoint directories: choose another output path")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        probe = _sibling(out_dir, _TMP)
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        raise CheckpointError(f"cannot write a checkpoint at {str(out_dir)!r}: {e.strerror or e}; "
                              "choose a writable output directory") from e
    clean_leftovers(out_dir, log)
    return out_dir


# ---------------------------------------------------------------- save


def finish_checkpoint(tmp: Path, out_dir: Path, qdict: dict, tokenizer=None, report=None) -> None:
    """The end every checkpoint write shares: the tokenizer and the quantize report (when ``report``
    is a :class:`~pvq.models.driver.QuantizeReport`) into ``tmp``, the integrity record (also put into
    ``qdict``, which the model's config holds), a check of what was written, a sync, and the atomic
    swap of ``tmp`` into ``out_dir``."""
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if hasattr(report, "to_dict") and hasattr(report, "layers"):
        (tmp / "quantize_report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    _write_integrity(tmp, qdict)
    verify_checkpoint(tmp)
    _fsync_tree(tmp)
    _swap_into_place(tmp, out_dir)


def save_quantized(
    model: nn.Module, out_dir: str | Path, quant_config, tokenizer=None, *, overwrite: bool = False,
    dtype: torch.dtype | None = None, log=None,
) -> Path:
    """Write a quantized model to ``out_dir`` atomically; returns the directory.

    quant_config: the :class:`QuantizeConfig` (or the :class:`QuantizeReport`,
        which is also written as ``quantize_report.json``).
    overwrite: replace an existing checkpoint at ``out_dir`` (otherwise an
        existing non-empty directory is an error).
    dtype: store the unquantized tensors (embeddings, norms, biases) in this
        dtype - the source model's own - casting the model in place (None: as they are).

    The checkpoint is written to a temporary directory beside ``out_dir`` with
    its integrity record, synced, and swapped into place with one atomic
    exchange (Linux ``renameat2``; elsewhere two renames, which the next run
    on the path repairs if interrupted): ``out_dir`` always holds nothing, the
    complete previous checkpoint, or the complete new one.
    """
    if has_merged_linears(model):
        raise QuantizeError("this model's q/k/v or gate/up linears were merged for decoding speed "
                            "(merge_shared_input_linears), a form checkpoints do not store; save before merging")
    out_dir = prepare_output(out_dir, overwrite, log)
    quantization_config_dict(model, quant_config)  # checks before anything changes
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "save_pretrained"):
        raise QuantizeError("save_quantized needs a transformers PreTrainedModel (with .config and .save_pretrained)")
    if dtype is not None:
        cast_unquantized(model, dtype)
    coded = getattr(getattr(quant_config, "config", quant_config), "entropy_code", False)
    if coded:
        entropy_code_model(model)  # the layers' streams as coded (decoded back below)
    qdict = quantization_config_dict(model, quant_config)  # kept weights counted in the dtype they are saved in
    tmp = _sibling(out_dir, _TMP)
    tmp.mkdir()
    try:
        config.quantization_config = qdict
        model.save_pretrained(tmp, **_in_memory_names(model))
        if any(tmp.glob("*.bin")) or not (any(tmp.glob("*.safetensors"))):
            raise QuantizeError("save_pretrained did not write safetensors; refusing a pickle checkpoint")
        finish_checkpoint(tmp, out_dir, qdict, tokenizer, quant_config)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if coded:
            decode_entropy_coded(model)
    return out_dir


def _in_memory_names(model: nn.Module) -> dict:
    """``save_pretrained`` options that keep the tensor names of the model in memory: transformers 5
    otherwise renames some families' tensors back to their legacy layout on save (GPT-NeoX
    ``lm_head`` -> ``embed_out``, Mixtral ``mlp`` -> ``block_sparse_moe``), and the names would no
    longer match the quantized modules of ``quantization_config``."""
    import inspect

    params = inspect.signature(model.save_pretrained).parameters
    return {"save_original_format": False} if "save_original_format" in params else {}


def cast_unquantized(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast every floating tensor of ``model`` except the stored codes and scales of its
    :class:`QuantizedLinear` modules (their bias is cast) to ``dtype``, in place."""
    for module in model.modules():
        if isinstance(module, QuantizedExperts):
            module.clear_cache()  # its experts are QuantizedLinears: their bias (none) and caches below
            continue
        if isinstance(module, QuantizedEmbedding):
            module.table_dtype = dtype  # its lookups come out in the model's dtype
        if isinstance(module, QuantizedLinear):
            if module.bias is not None:
                module.bias.data = module.bias.data.to(dtype)
            module.clear_cache()
            continue
        for p in module.parameters(recurse=False):
            if p.is_floating_point():
                p.data = p.data.to(dtype)
        for name, b in module.named_buffers(recurse=False):
            if b is not None and b.is_floating_point():
                setattr(module, name, b.to(dtype))
    if getattr(model, "config", None) is not None:
        model.config.dtype = dtype


def _write_integrity(tmp: Path, qdict: dict) -> None:
    cfg_file = tmp / "config.json"
    cfg = json.loads(cfg_file.read_text())
    qdict[INTEGRITY_KEY] = integrity_record(tmp, qdict)
    cfg["quantization_config"][INTEGRITY_KEY] = qdict[INTEGRITY_KEY]
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _fsync_tree(root: Path) -> None:
    for p in [*root.rglob("*"), root]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Put ``tmp`` at ``out_dir``: a rename when there is nothing there, else an atomic exchange
    (then the old checkpoint, now at ``tmp``, is removed)."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    if _exchange(tmp, out_dir):
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = _sibling(out_dir, _OLD)  # fallback: two renames; clean_leftovers repairs an interruption
    os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        os.replace(old, out_dir)
        raise
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
    verify_checkpoint(path, qdict)
    if via not in ("transformers", "direct"):
        raise QuantizeError(f"via must be 'transformers' or 'direct', got {via!r}")
    model = None
    if via == "transformers":
        try:
            model = _load_transformers(path, dtype, qdict)
        except PvqError:
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


def _load_transformers(path: Path, dtype, qdict: dict) -> nn.Module:
    from transformers import AutoModelForCausalLM

    register()
    kwargs = {} if dtype is None else {"dtype": dtype}
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    check_loaded(model, qdict, str(path))
    return model


def check_loaded(model: nn.Module, qdict: dict, where: str) -> None:
    """Refuse a model in which a module the checkpoint quantized is not quantized (transformers
    loads a checkpoint of an unknown ``quant_method`` as a randomly initialized plain model)."""
    have = {n for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    missing = [n for n in qdict["modules"] if n not in have]
    if missing:
        raise CheckpointError(
            f"{where} was loaded without its quantized modules ({len(missing)} of {len(qdict['modules'])}, e.g. "
            f"{missing[0]}): the pvq quantizer was not registered with transformers; `import pvq` before "
            "from_pretrained, or use pvq.models.load_quantized"
        )


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
    install_model_rotation(model, qdict)
    model.is_quantized = True
    decode_entropy_coded(model, str(path))  # coded layers back to their codec's layout (the quantizer's hook does it)
    return model


def _tied_keys(model: nn.Module) -> list[str]:
    keys = getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or {}
    if isinstance(keys, dict):
        return list(keys.keys())
    return list(keys)


