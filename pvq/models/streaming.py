"""Quantizing a model larger than memory: one decoder block in memory at a time.

A model given as a local directory of safetensors files (one file or shards
with ``model.safetensors.index.json``) is opened as a skeleton
(:func:`open_streamed`): every parameter on the ``meta`` device (no memory),
buffers real (rotary tables), and only the modules beside the decoder blocks
that the input capture runs (embeddings, their norms) loaded from the files.
:class:`BlockStore` is the driver's block hook
(:func:`pvq.models.quantize_model`'s ``io``): before block ``i`` it loads the
block's tensors from the shards (as float32, as ``from_pretrained(dtype=float32)``
does; refusing non-finite values), or, when a resumed run finished it before,
the quantized block from the work directory (:mod:`pvq.models.resume`); after
block ``i`` it writes the block to the work directory and puts its tensors back
on ``meta``. The embeddings are released before block 0 runs; the LM head is
never loaded (the capture stops after the last block).

:func:`write_streamed` assembles the checkpoint from the work directory, one
shard per decoder block plus one per tensor outside the blocks (read from the
source files), casting what is not codes to the source dtype exactly as
:func:`~pvq.models.checkpoint.save_quantized` does; so every tensor, config.json
and the integrity record equal those of the in-memory path, byte for byte (the
shard files are laid out differently). It writes to a temporary directory
beside the output and swaps it into place atomically, like ``save_quantized``.

While block ``i`` is quantized, block ``i + 1``'s tensors are read in a
thread (the same bytes; the reading overlaps the solver). Peak memory:
``resident_peak`` counts the bytes of the model's tensors that are not on
``meta`` plus the block read ahead, at their highest (two blocks, or the
embeddings during the capture); the process peak (:func:`peak_memory`) adds the activations, the
solver's work and torch itself.
"""

from __future__ import annotations

import json
import resource
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from pvq.errors import QuantizeError

from .checkpoint import _sibling, cast_unquantized, finish_checkpoint, prepare_output
from .experts import QuantizedExperts
from .format import quantization_config_dict
from .qlinear import QuantizedLinear, buffer_name
from .rotation_plan import folded_ends
from .structure import decoder_blocks

__all__ = ["BlockStore", "ShardSource", "open_streamed", "peak_memory", "streamable", "write_streamed"]

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def streamable(path: str | Path) -> bool:
    """Whether ``path`` is a local directory of safetensors weights (what :func:`open_streamed` reads)."""
    path = Path(path)
    return path.is_dir() and ((path / INDEX).is_file() or (path / SINGLE).is_file())


class ShardSource:
    """Tensors of a safetensors model directory, read one at a time."""

    def __init__(self, path: str | Path):
        from safetensors import safe_open

        self.path = Path(path)
        if (self.path / INDEX).is_file():
            weight_map = json.loads((self.path / INDEX).read_text())["weight_map"]
        elif (self.path / SINGLE).is_file():
            with safe_open(str(self.path / SINGLE), "pt") as f:
                weight_map = {k: SINGLE for k in f.keys()}
        else:
            raise QuantizeError(f"{str(self.path)!r} holds no {SINGLE} or {INDEX}; --stream reads safetensors "
                                "model directories (save the model with save_pretrained, safe_serialization=True)")
        self.weight_map: dict[str, str] = dict(weight_map)
        self.tied: set[str] = set()  # keys of tensors tied to an earlier key (set by open_streamed)

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def get(self, name: str) -> torch.Tensor:
        """One tensor, copied out of its file; the file is unmapped again (its pages would otherwise
        count in the process's resident memory for the rest of the run)."""
        from safetensors import safe_open

        file = self.weight_map[name]
        if not (self.path / file).is_file():
            raise QuantizeError(f"shard {file} of {str(self.path)!r} is missing (named by {INDEX})")
        with safe_open(str(self.path / file), "pt", device="cpu") as f:
            return f.get_tensor(name).clone()


@contextmanager
def _parameters_on_meta():
    """Parameters registered inside go to ``meta``; buffers stay where they are created."""
    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            p = module._parameters[name]
            module._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def open_streamed(path: str | Path, dtype: torch.dtype = torch.float32):
    """(skeleton model, tokenizer, :class:`BlockStore`-ready :class:`ShardSource`) of a safetensors
    model directory; refuses a directory whose tensor names are not the model's (a family that
    transformers converts on load) before any work."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = ShardSource(path)
    config = AutoConfig.from_pretrained(str(path))
    with _parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    tied = source.tied = _shared_keys(model)  # before loading breaks the sharing (assign=True)
    missing = [k for k, t in model.state_dict(keep_vars=True).items()
               if k not in source and k not in tied and t.device.type == "meta"]
    if missing:
        raise QuantizeError(
            f"{str(path)!r} does not hold the model's tensors under its module names (e.g. {missing[0]}; "
            f"{len(missing)} missing): transformers converts this checkpoint on load; quantize it without --stream"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise QuantizeError(f"{str(path)!r} has no usable tokenizer ({type(err).__name__}); save the model's "
                            "tokenizer files into that directory") from err
    _load(model, _capture_modules(model), source, dtype)
    return model, tokenizer, source


def _shared_keys(model: nn.Module) -> set[str]:
    """State-dict keys whose tensor is the same object as an earlier key's (tied weights: the LM
    head sharing the embeddings); ``save_pretrained`` stores such a tensor once, under the first key."""
    seen, out = set(), set()
    for k, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            out.add(k)
        seen.add(id(t))
    return out


def _capture_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules beside the block list on its path (what the input capture runs), by full name."""
    path, _ = decoder_blocks(model)
    parts = path.split(".")
    out = {}
    for depth in range(1, len(parts)):
        parent = ".".join(parts[:depth])
        for name, child in model.get_submodule(parent).named_children():
            if name != parts[depth]:
                out[f"{parent}.{name}"] = child
    return out


def _read(names: list[str], source: ShardSource, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors ``names`` (full names) from ``source``, floats as ``dtype``; non-finite ones refused."""
    out = {}
    for full in names:
        if full not in source:
            raise QuantizeError(f"tensor {full} is not in {str(source.path)!r}")
        v = source.get(full)
        out[full] = v.to(dtype) if v.is_floating_point() else v
        if v.is_floating_point() and not torch.isfinite(out[full]).all():
            raise QuantizeError(f"the model's tensor {full} holds non-finite values (NaN or inf); fix or "
                                "re-download the checkpoint before quantizing it")
    return out


def _meta_names(modules: dict[str, nn.Module]) -> list[str]:
    return [f"{prefix}.{k}" for prefix, mod in modules.items()
            for k, t in mod.state_dict(keep_vars=True).items() if t.device.type == "meta"]


def _assign(modules: dict[str, nn.Module], tensors: dict[str, torch.Tensor]) -> None:
    for prefix, mod in modules.items():
        state = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        if state:
            mod.load_state_dict(state, strict=False, assign=True)


def _load(model: nn.Module, modules: dict[str, nn.Module], source: ShardSource, dtype: torch.dtype) -> None:
    """Load the meta tensors of ``modules`` (full name -> module) from ``source``, as ``dtype``."""
    _assign(modules, _read(_meta_names(modules), source, dtype))


def resident_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers that are not on ``meta`` (each storage once)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.device.type != "meta" and t.numel():
            key = (t.untyped_storage().data_ptr(), t.device)
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
    return total


def peak_memory(device: torch.device | str | None = None) -> dict:
    """``{"peak_cpu_bytes": the process's peak resident set (getrusage), "peak_gpu_bytes": torch's
    peak allocated CUDA memory (0 without CUDA)}``."""
    cpu = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gpu = 0
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        gpu = int(torch.cuda.max_memory_allocated())
    return {"peak_cpu_bytes": int(cpu), "peak_gpu_bytes": gpu}


class BlockStore:
    """The driver's block hook (``quantize_model(..., io=store)``) for resumed and streamed runs.

    work: the run's :class:`~pvq.models.resume.WorkDir` (None: nothing is kept; only with an
        in-memory model). source: the :class:`ShardSource` of a streamed skeleton (None: the model
        is in memory). dtype: the dtype blocks are loaded in (the in-memory path's, float32).
        write: whether this process writes finished blocks (False on the other ranks of a distributed run).
    """

    def __init__(self, work=None, source: ShardSource | None = None, dtype: torch.dtype = torch.float32,
                 write: bool = True):
        if source is not None and work is None:
            raise QuantizeError("a streamed run needs an output path (its blocks are kept beside it)")
        self.work, self.source, self.dtype, self.write = work, source, dtype, write
        self.resident_peak = 0
        self.resumed: list[int] = []
        self._released = False
        self._pool = None
        self._next = None  # (block index, future of its tensors): read while the block before is quantized
        self._ahead_bytes = 0

    def load_block(self, model: nn.Module, i: int):
        """Make block ``i`` ready to run; returns its layer stats when it was finished before, else None."""
        if self.source is not None and not self._released:
            self.resident_peak = max(self.resident_peak, resident_bytes(model))
            for m in _capture_modules(model).values():
                m.to("meta")  # the embeddings are needed again only by the final writer (from the source)
            self._released = True
        path, blocks = decoder_blocks(model)
        if self.work is not None and self.work.is_finished(i):
            stats = self.work.load_block(model, i)
            self.resumed.append(i)
        else:
            stats = None
            if self.source is not None:
                mods = {f"{path}.{i}": blocks[i]}
                if self._next is not None and self._next[0] == i:
                    tensors = self._next[1].result()
                else:
                    tensors = _read(_meta_names(mods), self.source, self.dtype)
                self._next = None
                _assign(mods, tensors)
                del tensors
        if self.source is not None:
            self._prefetch(model, i + 1)
        self.resident_peak = max(self.resident_peak, resident_bytes(model) + self._pending())
        return stats

    def _pending(self) -> int:
        return self._ahead_bytes if self._next is not None else 0

    def _prefetch(self, model: nn.Module, i: int) -> None:
        """Start reading block ``i``'s tensors in a thread (one block ahead; the I/O and the float32
        conversion overlap the quantization of the block before). The bytes are the same."""
        path, blocks = decoder_blocks(model)
        if i >= len(blocks) or (self.work is not None and self.work.is_finished(i)):
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pvq-prefetch")
        mods = {f"{path}.{i}": blocks[i]}
        names = _meta_names(mods)
        size = self.dtype.itemsize
        self._ahead_bytes = sum(t.numel() * (size if t.is_floating_point() else t.element_size())
                                for t in blocks[i].state_dict(keep_vars=True).values() if t.device.type == "meta")
        self._next = (i, self._pool.submit(_read, names, self.source, self.dtype))

    def close(self) -> None:
        """Stop the prefetching thread (a block read ahead is dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool, self._next = None, None

    def block_done(self, model: nn.Module, i: int, stats) -> None:
        """Keep block ``i`` (unless it was loaded finished) and, when streaming, free its tensors."""
        path, blocks = decoder_blocks(model)
        self.resident_peak = max(self.resident_peak, resident_bytes(model) + self._pending())
        if self.work is not None and self.write and i not in self.resumed:
            self.work.save_block(model, i, stats)
        if self.source is not None:
            for m in blocks[i].modules():
                if isinstance(m, (QuantizedLinear, QuantizedExperts)):
                    m.clear_cache()
            blocks[i].to("meta")


# ---------------------------------------------------------------- the checkpoint


def _stored_keys(model: nn.Module) -> set[str]:
    """Full names of the stored code tensors (never cast)."""
    return {f"{n}.{buffer_name(k)}" for n, m in model.named_modules() if isinstance(m, QuantizedLinear)
            for k in m.stored_keys}


def write_streamed(model: nn.Module, store: BlockStore, out_dir, report, tokenizer=None, *, overwrite: bool = False,
                   dtype: torch.dtype | None = None, log=None) -> Path:
    """Write the checkpoint of a streamed run (see the module docstring); returns the directory."""
    from safetensors.torch import load_file, save_file

    out_dir = prepare_output(out_dir, overwrite, log)
    quantization_config_dict(model, report)  # checks before anything changes
    if dtype is not None:
        cast_unquantized(model, dtype)  # the skeleton: dtypes only, for the rate of the kept weights
    qdict = quantization_config_dict(model, report)
    path, blocks = decoder_blocks(model)
    stored = _stored_keys(model)
    tied = store.source.tied
    skeleton = model.state_dict(keep_vars=True)
    outside = [k for k in skeleton if not k.startswith(path + ".") and k not in tied]
    # under the fused plan with folded ends: the embedding, LM head and final norm as the in-memory fold
    # leaves them (from the source, in the dtype blocks were read in)
    folded = folded_ends(model, lambda n: store.source.get(n).to(store.dtype))
    groups: list[list[str] | int] = [*range(len(blocks)), *[[k] for k in outside]]

    def cast(name: str, t: torch.Tensor) -> torch.Tensor:
        if dtype is None or name in stored or not t.is_floating_point() or t.dtype == dtype:
            return t
        return t.to(store.dtype).to(dtype)  # as load (float32) then save_quantized's cast

    tmp = _sibling(out_dir, "tmp")
    tmp.mkdir()
    try:
        weight_map, total = {}, 0
        for k, group in enumerate(groups):
            file = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
            if isinstance(group, int):
                tensors = load_file(str(store.work.tensor_file(group)))
            else:
                tensors = {n: (folded[n]() if n in folded else store.source.get(n) if n in store.source
                               else skeleton[n].detach()) for n in group}
            tensors = {n: cast(n, t).contiguous() for n, t in tensors.items()}
            save_file(tensors, str(tmp / file), metadata={"format": "pt"})
            for n, t in tensors.items():
                weight_map[n] = file
                total += t.numel() * t.element_size()
            del tensors
        (tmp / INDEX).write_text(json.dumps({"metadata": {"total_size": total},
                                             "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n")
        model.config.quantization_config = qdict
        if dtype is not None:
            model.config.dtype = dtype
        model.config.architectures = [type(model).__name__]
        model.config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None and model.can_generate():
            model.generation_config.save_pretrained(tmp)
        finish_checkpoint(tmp, out_dir, qdict, tokenizer, report)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
