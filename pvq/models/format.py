"""The pvq checkpoint format, in one place: names, version, per-layer schema, checks.

Both the save/load paths (:mod:`pvq.models.checkpoint`) and the transformers
quantizer (:mod:`pvq.models.hf_quantizer`) import it; it imports neither.

A checkpoint is a directory that ``save_pretrained`` writes (safetensors,
never pickle) whose ``config.json`` holds a ``quantization_config``::

    {"quant_method": "pvq", "method": "pvq"|"gptq"|..., "bits": target,
     "bits_per_weight": measured over every block weight, "stored_bits": ..., "num_weights": ...,
     "quantized_fraction": quantized / all block weights,
     "kept": {name: bits}  (block weights left unquantized, counted at these bits),
     "config": QuantizeConfig.to_dict(),
     "modules": {name: {"codec": codec config, "in_features", "out_features",
                        "bias", "rotation": {"out_seed", "in_seed"[, "in_block"]} | null (a seed null: that side
                                    absent; in_block: the input side block-diagonal in chunks of that many inputs),
                        "layout": "stored",
                        "tensors": {key: {"shape", "dtype"}}, "bits_per_weight",
                        "activation": {"method", "bits", "dim", "rotate", "clip",
                                       "gain_bits", "bits_per_activation"}  (only when set)}},
     "bits_per_activation": measured | null,
     "rotation": {"plan": "fused", "hidden_size", "head_dim", "stream_seed", "head_seed",
                  "ends": "folded" | "online"} | null  (the model-level rotation plan),
     "online_rotations_per_block": ...,
     "pvq_version": ..., "format_version": 5,
     "allocation": {...}  (optional: --allocate's per-layer rates and why; readers ignore it)}

plus ``"integrity": {"algorithm": "sha256", "tensors": {name: {"dtype",
"shape", "sha256"}}, "modules": {name: sha256 of the entry's canonical JSON}}``,
which :func:`verify_checkpoint` checks on every load path.

Version history: 1 - no ``layout`` (read as ``"stored"``), codec options as
flat fields of ``config``, no integrity record; 2 - ``layout`` per layer,
``config.options``, the integrity record; 3 - ``experts`` (quantized MoE
expert stacks: ``{stack name: {"num_experts", "out_features", "in_features",
"transposed"}}``, each expert a module entry ``<stack>_pvq.<e>``; digested in
the integrity record's ``experts``), ``quantized_fraction`` and ``kept``, and
the rate over every block weight; optional
``activation`` per layer (the layer quantizes its input; a version-2 reader would ignore it
silently) and a top-level ``bits_per_activation``; 4 - ``rotation`` (the fused plan: the
residual stream's and the heads' randomized Hadamards folded into the stored tensors, and
whether the ends of a tied model rotate online; digested in the integrity record's
``rotation``; loaders install its online ends), one-sided layer rotations (a seed null) and
``online_rotations_per_block``. Versions 1-3 carry no ``rotation``: their layers rotate as
their seeds say; 5 - ``in_block`` in a layer's ``rotation`` (``--rotation-block``: the input side
block-diagonal; a version-4 reader would ignore it silently and rotate the whole input).
A quantized layer's tensors are ``<module>.packed_<key>`` (uint8 codes, any
fitted data such as a K-means codebook), ``<module>.scales`` (fp16) and
``<module>.bias``.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from pathlib import Path

from torch import nn

from pvq.errors import CheckpointError, QuantizeError

from .coding import layer_bits
from .experts import QuantizedExperts, replace_experts
from .methods import QuantizeConfig
from .qlinear import MODULE_KINDS, QuantizedEmbedding, QuantizedLinear, buffer_name
from .rotation_plan import install_stream_rotation, model_rotation, stream_rotations
from .structure import decoder_blocks, is_linear, is_weight, linear_sizes

__all__ = [
    "FORMAT_VERSION",
    "QUANT_METHOD",
    "INTEGRITY_KEY",
    "check_tensors",
    "embedding_bits_per_weight",
    "head_bits_per_weight",
    "install_model_rotation",
    "online_rotations_per_block",
    "integrity_record",
    "quantization_config_dict",
    "quantized_modules",
    "read_quantization_config",
    "replace_linears",
    "safetensors_files",
    "tensor_digests",
    "verify_checkpoint",
]

QUANT_METHOD = "pvq"
FORMAT_VERSION = 5
READABLE_VERSIONS = (1, 2, 3, 4, 5)


def quantized_modules(model: nn.Module) -> dict[str, QuantizedLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def block_rate(model: nn.Module, kept_bits: int | None = None) -> dict:
    """Bits of every weight of the decoder blocks: quantized ones (:class:`QuantizedLinear`) from
    their stored tensors, the others (``kept``: ``{name: {"numel", "bits"}}``) at ``kept_bits``
    or their dtype's width. Returns ``stored_bits``, ``num_weights``, ``quantized_bits``,
    ``quantized_weights``, ``kept`` and ``coded_bits`` (``stored_bits`` with each entropy-coded
    layer at its coded size; ``stored_bits`` counts the fixed-rate codes)."""
    path, blocks = decoder_blocks(model)
    qbits = qweights = coded = 0
    kept: dict[str, dict] = {}
    for i, block in enumerate(blocks):
        for m in block.modules():
            if isinstance(m, QuantizedLinear):
                fixed, stored = layer_bits(m)
                qbits, qweights, coded = qbits + fixed, qweights + m.num_weights, coded + stored
        for n, p in block.named_parameters():
            if is_weight(n, p):
                kept[f"{path}.{i}.{n}"] = {"numel": p.numel(), "bits": kept_bits or p.element_size() * 8}
    bits = qbits + sum(k["numel"] * k["bits"] for k in kept.values())
    weights = qweights + sum(k["numel"] for k in kept.values())
    return {"stored_bits": bits, "num_weights": weights, "quantized_bits": qbits, "quantized_weights": qweights,
            "kept": kept, "coded_bits": bits - qbits + coded}


def embedding_bits_per_weight(model: nn.Module) -> float | None:
    """Stored bits per weight of a quantized input embedding (``--quantize-embedding``; fixed-rate codes),
    None when it is not a :class:`QuantizedEmbedding`. Not part of the block rate."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(emb, QuantizedEmbedding):
        return None
    return layer_bits(emb)[0] / emb.num_weights


def head_bits_per_weight(model: nn.Module) -> float | None:
    """Stored bits per weight of a quantized LM head (``--quantize-head``; fixed-rate codes), None when the
    head is not a :class:`QuantizedLinear`. Not part of the block rate."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, QuantizedLinear):
        return None
    return layer_bits(head)[0] / head.num_weights


def quantization_config_dict(model: nn.Module, quant_config) -> dict:
    """The ``quantization_config`` of a quantized model (see the module docstring)."""
    from pvq import __version__

    config = _as_config(quant_config)
    mods = quantized_modules(model)
    if not mods:
        raise QuantizeError("the model holds no QuantizedLinear modules; quantize it first (pvq.models.quantize_model)")
    rate = block_rate(model)
    act = [m for m in mods.values() if m.act_quant is not None]
    act_bits = sum(m.in_features * m.bits_per_activation() for m in act) / sum(m.in_features for m in act) if act else None
    return {
        "quant_method": QUANT_METHOD,
        "method": config.method,
        "bits": config.bits,
        "bits_per_weight": rate["stored_bits"] / rate["num_weights"],
        "stored_bits": rate["stored_bits"],
        "stored_bits_per_weight": rate["coded_bits"] / rate["num_weights"],  # entropy-coded layers as coded
        "num_weights": rate["num_weights"],
        "quantized_fraction": rate["quantized_weights"] / rate["num_weights"],
        "kept": {n: k["bits"] for n, k in rate["kept"].items()},
        "bits_per_activation": act_bits,
        "config": config.to_dict(),
        "modules": {n: m.layer_config() for n, m in mods.items()},
        "experts": expert_entries(model),
        "rotation": None if model_rotation(model) is None else model_rotation(model).to_dict(),
        "online_rotations_per_block": online_rotations_per_block(model),
        "pvq_version": __version__,
        "format_version": FORMAT_VERSION,
        **({"allocation": alloc} if (alloc := getattr(quant_config, "allocation", None)) is not None else {}),
    }


def expert_entries(model: nn.Module) -> dict:
    """``{stack name: {"num_experts", "out_features", "in_features", "transposed"}}`` of every
    :class:`QuantizedExperts` (its experts are module entries ``<stack>_pvq.<e>``)."""
    out = {}
    for n, m in model.named_modules():
        if isinstance(m, QuantizedExperts):
            owner = n.rpartition(".")[0]
            out[f"{owner}.{m.param}" if owner else m.param] = {
                "num_experts": len(m), "out_features": m[0].out_features, "in_features": m[0].in_features,
                "transposed": m.transposed,
            }
    return out


def _as_config(quant_config) -> QuantizeConfig:
    if isinstance(quant_config, QuantizeConfig):
        return quant_config
    cfg = getattr(quant_config, "config", None)  # a QuantizeReport
    if isinstance(cfg, QuantizeConfig):
        return cfg
    if isinstance(quant_config, dict):
        return QuantizeConfig.from_dict(quant_config)
    raise CheckpointError(
        f"quant_config must be a QuantizeConfig, a QuantizeReport or a dict, got {type(quant_config).__name__}"
    )


def safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / n for n in names]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    raise CheckpointError(f"{str(path)!r} holds no model.safetensors (or index); not a pvq checkpoint")


def _tensor_headers(path: Path) -> dict[str, tuple[list[int], str]]:
    """``{name: (shape, safetensors dtype)}`` of every stored tensor (truncated files refused)."""
    out = {}
    for f in safetensors_files(path):
        if not f.is_file():
            raise CheckpointError(f"{f.name} of {str(path)!r} is missing")
        with open(f, "rb") as fh:
            header, _, _ = _safetensors_header(fh, f)
        out.update({k: (list(v["shape"]), v["dtype"]) for k, v in header.items()})
    return out


_ST_DTYPES = {"U8": "uint8", "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64",
              "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}


def check_tensors(path: Path, qdict: dict) -> None:
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
        raise CheckpointError(
            "the checkpoint does not match its quantization_config: " + "; ".join(problems[:8])
            + ("" if len(problems) <= 8 else f" (and {len(problems) - 8} more)")
        )


def read_quantization_config(path: str | Path) -> dict:
    """The ``quantization_config`` of a checkpoint directory (checked for pvq format)."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{str(path)!r} has no config.json; not a checkpoint directory")
    q = json.loads(cfg_file.read_text()).get("quantization_config")
    if not q or q.get("quant_method") != QUANT_METHOD:
        raise CheckpointError(f"{str(path)!r} is not a pvq-quantized checkpoint (no quantization_config with quant_method 'pvq')")
    if int(q.get("format_version", 0)) not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{str(path)!r} uses pvq checkpoint format {q.get('format_version')}, newer than this pvq "
            f"({FORMAT_VERSION}); upgrade pvq" if int(q.get("format_version", 0)) > FORMAT_VERSION
            else f"{str(path)!r} has an unknown pvq checkpoint format_version {q.get('format_version')!r}"
        )
    return q


def replace_linears(model: nn.Module, qdict: dict) -> None:
    """Swap each linear (``nn.Linear``, ``Conv1D``) named in ``qdict["modules"]`` for an empty :class:`QuantizedLinear`
    (on the linear's device, bias in its dtype), and an input embedding whose entry's ``kind`` is
    ``embedding`` for an empty :class:`QuantizedEmbedding` (its table in the embedding's dtype), after
    installing the empty :class:`QuantizedExperts` of ``qdict["experts"]`` (format 3) in place of their 3-D
    parameters."""
    replace_experts(model, qdict.get("experts") or {}, qdict["modules"])
    for name, cfg in qdict["modules"].items():
        try:
            old = model.get_submodule(name)
        except AttributeError as e:
            raise CheckpointError(f"quantized module {name!r} of the checkpoint is not in the model") from e
        if isinstance(old, QuantizedLinear):
            continue
        kind = cfg.get("kind", "linear")
        if kind not in MODULE_KINDS:
            raise CheckpointError(f"module {name!r} is of kind {kind!r}, which this pvq does not know "
                                  f"({', '.join(MODULE_KINDS)}); upgrade pvq")
        if kind == "embedding":
            if type(old) is not nn.Embedding:
                raise CheckpointError(f"module {name!r} is {type(old).__name__}, expected the nn.Embedding the "
                                      "checkpoint quantized")
            inp, out = old.embedding_dim, old.num_embeddings
        elif not is_linear(old):
            raise CheckpointError(f"module {name!r} is {type(old).__name__}, expected a linear layer to replace")
        else:
            inp, out = linear_sizes(old)
        if (inp, out) != (cfg["in_features"], cfg["out_features"]):
            raise CheckpointError(
                f"module {name!r} is [{out}x{inp}] in the model, "
                f"[{cfg['out_features']}x{cfg['in_features']}] in the quantization_config"
            )
        q = MODULE_KINDS[kind].from_layer_config(cfg, bias_dtype=old.weight.dtype, device=old.weight.device)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, q)



# ---------------------------------------------------------------- integrity record

INTEGRITY_KEY = "integrity"
"""Key of the integrity record inside ``quantization_config`` (format 2 and later)."""


def _entry_digest(entry: dict) -> str:
    """sha256 of a module's config entry as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _safetensors_header(f, path: Path) -> tuple[dict, int, int]:
    """(header without metadata, data start, file size) of a safetensors file, checked for truncation."""
    size = os.fstat(f.fileno()).st_size
    raw = f.read(8)
    if len(raw) < 8:
        raise CheckpointError(f"{path.name} is truncated (no safetensors header); re-save the checkpoint")
    n = struct.unpack("<Q", raw)[0]
    if n > size - 8 or n > 100 * 1024 * 1024:
        raise CheckpointError(f"{path.name} is truncated or not a safetensors file (header of {n} bytes)")
    try:
        header = json.loads(f.read(n))
    except ValueError as e:
        raise CheckpointError(f"{path.name} has a corrupt safetensors header; re-save the checkpoint") from e
    header.pop("__metadata__", None)
    end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    if 8 + n + end > size:
        raise CheckpointError(
            f"{path.name} is truncated: its tensors need {8 + n + end} bytes, the file has {size}; re-save the checkpoint"
        )
    return header, 8 + n, size


def tensor_digests(path: str | Path) -> dict[str, dict]:
    """``{tensor name: {"file", "dtype", "shape", "sha256"}}`` of every tensor in a checkpoint's
    safetensors files, hashing the stored bytes as they are on disk (no conversion)."""
    path = Path(path)
    out: dict[str, dict] = {}
    for file in safetensors_files(path):
        if not file.is_file():
            raise CheckpointError(f"{file.name} of {str(path)!r} is missing")
        with open(file, "rb") as f:
            header, start, _ = _safetensors_header(f, file)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                for name, info in header.items():
                    a, b = (int(x) for x in info["data_offsets"])
                    out[name] = {
                        "file": file.name, "dtype": info["dtype"], "shape": list(info["shape"]),
                        "sha256": hashlib.sha256(mm[start + a : start + b]).hexdigest(),
                    }
    return out


def integrity_record(path: str | Path, qdict: dict) -> dict:
    """The integrity record of a written checkpoint: every tensor (dtype, shape, sha256 of its bytes)
    and a digest of every quantized module's config entry."""
    return {
        "algorithm": "sha256",
        "tensors": {k: {kk: v[kk] for kk in ("dtype", "shape", "sha256")} for k, v in tensor_digests(path).items()},
        "modules": {name: _entry_digest(entry) for name, entry in qdict["modules"].items()},
        **({"experts": {n: _entry_digest(e) for n, e in qdict["experts"].items()}} if qdict.get("experts") else {}),
        **({"rotation": _entry_digest(qdict["rotation"])} if qdict.get("rotation") else {}),
    }


def online_rotations_per_block(model: nn.Module) -> float:
    """Online rotations of activations per decoder block per token: every quantized linear's
    present sides (experts decode into dense weights: none online), plus the model's stream
    rotations (the online ends of a tied fused model) spread over the blocks."""
    _, blocks = decoder_blocks(model)
    decoded = {id(m) for e in model.modules() if isinstance(e, QuantizedExperts) for m in e.modules()}
    count = sum(m.rotation.online_rotations for m in model.modules()
                if isinstance(m, QuantizedLinear) and m.rotation is not None and id(m) not in decoded)
    return (count + stream_rotations(model)) / max(len(blocks), 1)


def install_model_rotation(model: nn.Module, qdict: dict) -> None:
    """What a loaded model runs besides its tensors under the checkpoint's rotation plan (format 4:
    the online ends of a tied ``fused`` model); older formats have none. Both loaders call this."""
    install_stream_rotation(model, qdict.get("rotation"))


def verify_checkpoint(path: str | Path, qdict: dict | None = None) -> None:
    """Refuse a checkpoint whose files or config are not what was written.

    Checks, naming what is wrong: truncated or corrupt safetensors files;
    tensors missing, extra, or with other dtype, shape or bytes than the
    integrity record says; quantized modules added, removed or edited in the
    config; and (all versions) that every tensor a quantized module needs is
    there with its configured shape and dtype. Format-1 checkpoints carry no
    record: only the structural checks run for them.
    """
    path = Path(path)
    qdict = read_quantization_config(path) if qdict is None else qdict
    version = int(qdict.get("format_version", 1))
    record = qdict.get(INTEGRITY_KEY)
    if version >= 2 and not isinstance(record, dict):
        raise CheckpointError(
            f"{str(path)!r} lacks its integrity record (quantization_config.{INTEGRITY_KEY}); it was edited "
            "or written by something else than pvq: re-save the checkpoint"
        )
    if record is None:
        check_tensors(path, qdict)
        return
    problems = []
    want_mods, have_mods = record.get("modules", {}), qdict.get("modules", {})
    for name in sorted(set(want_mods) - set(have_mods)):
        problems.append(f"quantized module {name} is missing from the config")
    for name in sorted(set(have_mods) - set(want_mods)):
        problems.append(f"quantized module {name} is in the config but not in the record")
    for name in sorted(set(want_mods) & set(have_mods)):
        if _entry_digest(have_mods[name]) != want_mods[name]:
            problems.append(f"the config entry of {name} was edited")
    want_exp, have_exp = record.get("experts", {}), qdict.get("experts") or {}
    for name in sorted(set(want_exp) ^ set(have_exp)):
        problems.append(f"quantized experts {name} are in the {'record' if name in want_exp else 'config'} only")
    for name in sorted(set(want_exp) & set(have_exp)):
        if _entry_digest(have_exp[name]) != want_exp[name]:
            problems.append(f"the config entry of experts {name} was edited")
    want_rot, have_rot = record.get("rotation"), qdict.get("rotation")
    if (want_rot is None) != (have_rot is None) or (have_rot is not None and _entry_digest(have_rot) != want_rot):
        problems.append("the rotation record (quantization_config.rotation) was edited, added or removed")
    want, have = record.get("tensors", {}), tensor_digests(path)
    for name in sorted(set(want) - set(have)):
        problems.append(f"tensor {name} is missing")
    for name in sorted(set(have) - set(want)):
        problems.append(f"tensor {name} is not in the record (added)")
    for name in sorted(set(want) & set(have)):
        w, h = want[name], have[name]
        if (w["dtype"], list(w["shape"])) != (h["dtype"], h["shape"]):
            problems.append(f"tensor {name} is {h['dtype']}{h['shape']}, the record says {w['dtype']}{w['shape']}")
        elif w["sha256"] != h["sha256"]:
            problems.append(f"tensor {name} was edited (its bytes differ from the record)")
    if problems:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not what was written: " + "; ".join(problems[:6])
            + ("" if len(problems) <= 6 else f" (and {len(problems) - 6} more)") + "; re-save it"
        )
    check_tensors(path, qdict)
