"""Entropy coding of any codec's stored tensors (lossless, per layer).

:func:`entropy_code` turns what ``codec.store`` wrote for ``n`` vectors into
framed, self-checking streams (:mod:`pvq.codecs.entropy`):

* the codes: ``codec.unpack`` gives the integer code tensors; fields that
  are constant inside each group of ``G`` vectors (the uniform grid's zero
  points) are kept once per group; all are ANS-coded with a static model per
  field (stored key ``ecfields``), used only when ``codec.pack`` of the codes
  gives back the stored bytes exactly and when it beats coding the packed
  bytes themselves;
* every other stored tensor (and the packed codes otherwise) as bytes: the
  smallest of raw, zstd and ANS of its byte planes (``ec_<key>``).

The result is described by an :class:`EntropyCodedCodec` (the inner codec's
config and the inner tensors' shapes and dtypes), which only knows how to
give the inner codec and tensors back (:func:`entropy_decode`); it is a
storage form, never run. :func:`code_report` measures, per stored stream,
the empirical entropy of the symbols and what the coder achieved.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from . import entropy
from .base import CodecError, Codes, VectorCodec, codec_from_config, codec_to_config

CODES_KEY = "ecfields"
PREFIX = "ec_"
_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.bfloat16,
    torch.float32, torch.float64)}


class EntropyCodedCodec(VectorCodec):
    """Storage form of an entropy-coded layer: ``inner`` codec config and ``tensors``
    ``{key: {"shape", "dtype"}}`` of the inner stored tensors. Decode with :func:`entropy_decode`."""

    name: ClassVar[str] = "entropy-coded"
    stores_scale: ClassVar[bool] = False

    def __init__(self, inner: dict, tensors: dict) -> None:
        self.inner_config = dict(inner)
        self.inner = codec_from_config(self.inner_config)
        self.tensors = {k: {"shape": [int(s) for s in v["shape"]], "dtype": str(v["dtype"])} for k, v in tensors.items()}
        for k, v in self.tensors.items():
            if v["dtype"] not in _DTYPES:
                raise CodecError(f"entropy-coded tensor {k!r} has an unsupported dtype {v['dtype']!r}")
        self.dim = self.inner.dim
        self.group_size = self.inner.group_size

    def config(self) -> dict:
        return {"inner": dict(self.inner_config), "tensors": {k: dict(v) for k, v in self.tensors.items()}}

    def fixed_rate_bits(self) -> int:
        """Bits of the inner (fixed-rate) stored tensors."""
        return sum(int(np.prod(v["shape"])) * _DTYPES[v["dtype"]].itemsize * 8 for v in self.tensors.values())

    def nominal_bits_per_weight(self) -> float:
        return self.inner.nominal_bits_per_weight()

    def describe(self) -> str:
        return f"entropy-coded {self.inner.describe()}"

    def _refuse(self, *args, **kwargs):
        raise CodecError("an entropy-coded layer is a storage form: decode it first (pvq.codecs.coded.entropy_decode; "
                         "the loaders do)")

    group_scales = encode = decode = pack = unpack = _refuse


def _per_group(values: torch.Tensor, g: int) -> bool:
    n = values.shape[0]
    if g <= 1 or n % g:
        return False
    v = values.reshape(n // g, g, -1)
    return bool((v == v[:, :1]).all())


def entropy_code(codec: VectorCodec, stored: dict[str, torch.Tensor], n: int) -> tuple[EntropyCodedCodec, dict]:
    """``(storage codec, {key: uint8 stream})`` of the tensors ``codec.store`` wrote for ``n`` vectors."""
    spec = {k: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for k, t in stored.items()}
    out: dict[str, bytes] = {}
    byte_keys = list(stored)
    fields = _code_fields(codec, stored, n)
    if fields is not None:
        packed, blob = fields
        as_bytes = sum(len(_bytes_blob(stored[k])) for k in packed)
        if len(blob) < as_bytes:
            out[CODES_KEY] = blob
            byte_keys = [k for k in stored if k not in packed]
    for k in byte_keys:
        out[PREFIX + k] = _bytes_blob(stored[k])
    tensors = {k: torch.frombuffer(bytearray(b), dtype=torch.uint8) for k, b in out.items()}
    return EntropyCodedCodec(codec_to_config(codec), spec), tensors


def _bytes_blob(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return entropy.encode_bytes(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"", t.element_size())


def _code_fields(codec: VectorCodec, stored: dict, n: int) -> tuple[list[str], bytes] | None:
    """(packed keys, fields stream) when the codes repack to the stored bytes exactly, else None."""
    try:
        codes = codec.unpack(stored, n)
        repacked = codec.pack(codes)
    except Exception:  # a codec whose codes do not round-trip this way is coded as bytes
        return None
    if not repacked or any(k not in stored or not torch.equal(v.cpu(), stored[k].cpu()) for k, v in repacked.items()):
        return None
    arrays = {}
    for name, v in codes.items():
        v = v.detach().cpu()
        if v.is_floating_point() or v.dim() == 0 or v.shape[0] != n:
            return None
        tag = "g" if _per_group(v, codec.group_size) else "v"
        arrays[f"{tag}:{name}"] = (v[:: codec.group_size] if tag == "g" else v).numpy()
    return list(repacked), entropy.encode_fields(arrays)


def entropy_decode(codec: EntropyCodedCodec, tensors: dict[str, torch.Tensor], n: int) -> tuple[VectorCodec, dict]:
    """``(inner codec, inner stored tensors)`` bit-identical to what :func:`entropy_code` took.
    :class:`~pvq.codecs.entropy.CodedStreamError` on a corrupt or truncated stream."""
    inner = codec.inner
    out: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        blob = t.detach().cpu().numpy().tobytes()
        if key == CODES_KEY:
            codes: Codes = {}
            for name, v in entropy.decode_fields(blob).items():
                tag, _, field = name.partition(":")
                v = torch.from_numpy(np.ascontiguousarray(v))
                codes[field] = v.repeat_interleave(inner.group_size, dim=0) if tag == "g" else v
            out.update(inner.pack(codes))
        elif key.startswith(PREFIX):
            k = key[len(PREFIX):]
            if k not in codec.tensors:
                raise entropy.CodedStreamError(f"stream {key!r} is not one of the layer's tensors")
            data = entropy.decode(blob)
            s = codec.tensors[k]
            dtype = _DTYPES[s["dtype"]]
            if not isinstance(data, bytes) or len(data) != int(np.prod(s["shape"])) * dtype.itemsize:
                raise entropy.CodedStreamError(f"stream {key!r} decodes to the wrong size (corrupt)")
            out[k] = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(s["shape"])
        else:
            raise entropy.CodedStreamError(f"unexpected stored key {key!r} in an entropy-coded layer")
    for k, s in codec.tensors.items():
        t = out.get(k)
        if t is None or list(t.shape) != s["shape"] or str(t.dtype).removeprefix("torch.") != s["dtype"]:
            raise entropy.CodedStreamError(f"decoded tensor {k!r} does not match its recorded shape and dtype")
    return inner, out


def code_report(codec: VectorCodec, stored: dict[str, torch.Tensor], n: int) -> dict:
    """What coding gains on one layer, in bits: ``{"fixed_bits", "coded_bits", "streams"}`` where
    ``coded_bits`` is what :func:`entropy_code` stores and ``streams`` maps each code field
    (``codes:<field>``, e.g. PVQ's ``codes:index`` and ``codes:gain``) and each other stored tensor
    to ``{"entropy_bits"}`` (empirical order-0 entropy of its symbols, bytes for tensors) and
    ``{"coded_bits"}`` (that stream coded alone, model and frame included)."""
    streams: dict[str, dict] = {}
    fields = _code_fields(codec, stored, n)
    packed: list[str] = []
    if fields is not None:
        packed, _ = fields
        for name, v in codec.unpack(stored, n).items():
            v = v.detach().cpu()
            arr = (v[:: codec.group_size] if _per_group(v, codec.group_size) else v).numpy()
            streams[f"codes:{name}"] = {"entropy_bits": _field_entropy(arr),
                                        "coded_bits": 8 * len(entropy.encode_symbols(arr))}
    for k, t in stored.items():
        if k in packed:
            continue
        raw = t.detach().cpu().contiguous().view(torch.uint8).numpy()
        streams[k] = {"entropy_bits": entropy.entropy_bits(raw), "coded_bits": 8 * len(_bytes_blob(t))}
    _, blobs = entropy_code(codec, stored, n)
    return {"fixed_bits": sum(t.numel() * t.element_size() * 8 for t in stored.values()),
            "coded_bits": sum(b.numel() * 8 for b in blobs.values()), "streams": streams}


def _field_entropy(arr: np.ndarray) -> float:
    """Entropy as :func:`~pvq.codecs.entropy.encode_symbols` models it: all values as one source when
    they span < 2^16 values, else each column's bytes as separate sources."""
    a = arr.reshape(arr.shape[0], -1).astype(np.int64) if arr.size else arr.reshape(0, 1)
    if a.size == 0 or int(a.max()) - int(a.min()) < 1 << 16:
        return entropy.entropy_bits(a)
    total = 0.0
    for c in range(a.shape[1]):
        rel = a[:, c] - a[:, c].min()
        for d in range(max(1, (int(rel.max()).bit_length() + 7) // 8)):
            total += entropy.entropy_bits((rel >> (8 * d)) & 255)
    return total
