"""Lossless coding of integer symbol streams and byte streams (pure math, no models).

Every coded stream is a self-checking *frame* (bytes)::

    magic b"PQ" | method (1 byte) | payload length (u64) | payload | crc32 (u32, of all before it)

so a corrupt or truncated stream is refused (:class:`CodedStreamError`), never
decoded into garbage. Methods:

* ``raw`` - the bytes as they are;
* ``zstd`` - `zstandard` at level 12 (the floor any stream is compared with);
* ``ans`` - integer symbols through `constriction`'s ANS coder with a static
  (per-stream) categorical model whose frequencies are stored in the payload
  (16 bits per symbol of the alphabet, counted in the rate);
* ``ans-planes`` - the bytes of an ``element_size``-byte dtype split into byte
  planes (all first bytes, then all second bytes, ...), each plane an ``ans``
  stream (fp16 scales: the high bytes are far from uniform);
* ``fields`` - named ``symbols`` frames (:func:`encode_fields`, a codec's code tensors);
* ``symbols`` - an integer array ``[n, c]`` (codec codes): one ``ans`` stream
  of all values when they span fewer than 2^16 values, else one stream per
  column and byte digit (PVQ's 32-bit index limbs).

:func:`encode_bytes` / :func:`encode_symbols` pick the smallest method;
:func:`decode` inverts any frame. :func:`entropy_bits` is the empirical order-0
entropy (bits) of a symbol array, the bound an order-0 coder is measured against.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from pvq.errors import CodecError

__all__ = [
    "CodedStreamError",
    "ans_decode",
    "ans_encode",
    "decode",
    "decode_fields",
    "decode_symbols",
    "encode_bytes",
    "encode_fields",
    "encode_symbols",
    "entropy_bits",
    "frame",
]

MAGIC = b"PQ"
RAW, ZSTD, ANS, ANS_PLANES, SYMBOLS, FIELDS = 0, 1, 2, 3, 4, 5
METHOD_NAMES = {RAW: "raw", ZSTD: "zstd", ANS: "ans", ANS_PLANES: "ans-planes", SYMBOLS: "symbols", FIELDS: "fields"}
_HEAD = struct.Struct("<2sBQ")
_CRC = struct.Struct("<I")
_FREQ_MAX = 65535
_DIGIT = 1 << 16


class CodedStreamError(CodecError):
    """A coded stream that is corrupt, truncated or of an unknown kind."""


# ---------------------------------------------------------------- frames


def frame(method: int, payload: bytes) -> bytes:
    """``payload`` framed with its method, length and crc32."""
    head = _HEAD.pack(MAGIC, method, len(payload)) + payload
    return head + _CRC.pack(zlib.crc32(head))


def unframe(blob: bytes) -> tuple[int, bytes]:
    """(method, payload) of a frame; :class:`CodedStreamError` when it does not check."""
    blob = bytes(blob)
    if len(blob) < _HEAD.size + _CRC.size:
        raise CodedStreamError(f"coded stream is truncated ({len(blob)} bytes, less than a frame header)")
    magic, method, size = _HEAD.unpack_from(blob)
    if magic != MAGIC:
        raise CodedStreamError("coded stream does not start with the pvq frame magic (corrupt or not coded)")
    need = _HEAD.size + size + _CRC.size
    if len(blob) != need:
        raise CodedStreamError(f"coded stream is truncated or padded: the frame says {need} bytes, got {len(blob)}")
    (crc,) = _CRC.unpack_from(blob, need - _CRC.size)
    if zlib.crc32(blob[: need - _CRC.size]) != crc:
        raise CodedStreamError("coded stream is corrupt (crc32 mismatch)")
    if method not in METHOD_NAMES:
        raise CodedStreamError(f"coded stream has unknown method {method}")
    return method, blob[_HEAD.size : need - _CRC.size]


def method_of(blob: bytes) -> str:
    """Name of the method of a (checked) frame."""
    return METHOD_NAMES[unframe(blob)[0]]


# ---------------------------------------------------------------- ANS of symbols


def entropy_bits(symbols: np.ndarray) -> float:
    """Empirical order-0 entropy of all values of ``symbols`` in bits (total, not per symbol)."""
    s = np.asarray(symbols).reshape(-1)
    if s.size == 0:
        return 0.0
    _, counts = np.unique(s, return_counts=True)
    p = counts / s.size
    return float(-(counts * np.log2(p)).sum())


def _frequencies(counts: np.ndarray) -> np.ndarray:
    """Counts scaled into uint16 (every symbol seen keeps a frequency >= 1)."""
    top = counts.max()
    f = np.round(counts.astype(np.float64) * (_FREQ_MAX / top)) if top > _FREQ_MAX else counts.astype(np.float64)
    f = np.where(counts > 0, np.maximum(f, 1), 0)
    return f.astype(np.uint16)


def _model(freqs: np.ndarray):
    import constriction

    p = freqs.astype(np.float64)
    return constriction.stream.model.Categorical(p / p.sum(), perfect=False)


_ANS_HEAD = struct.Struct("<QqI")  # count, offset (smallest value), alphabet size


def ans_encode(values: np.ndarray) -> bytes:
    """ANS payload of integer ``values`` (any shape, flattened) with a static model:
    count, offset, alphabet, uint16 frequencies, then the coder's 32-bit words."""
    import constriction

    v = np.asarray(values).reshape(-1).astype(np.int64)
    if v.size == 0:
        return _ANS_HEAD.pack(0, 0, 0)
    lo = int(v.min())
    sym = v - lo
    alphabet = int(sym.max()) + 1
    if alphabet > _DIGIT:
        raise CodecError(f"ans_encode takes at most {_DIGIT} distinct values in range, got a span of {alphabet}")
    freqs = _frequencies(np.bincount(sym, minlength=alphabet))
    if alphabet == 1:
        return _ANS_HEAD.pack(v.size, lo, 1) + freqs.tobytes()
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(sym.astype(np.int32), _model(freqs))
    words = coder.get_compressed().astype("<u4")
    return _ANS_HEAD.pack(v.size, lo, alphabet) + freqs.astype("<u2").tobytes() + words.tobytes()


def ans_decode(payload: bytes) -> np.ndarray:
    """Inverse of :func:`ans_encode`: int64 values (flat)."""
    import constriction

    if len(payload) < _ANS_HEAD.size:
        raise CodedStreamError("ANS payload is truncated")
    count, lo, alphabet = _ANS_HEAD.unpack_from(payload)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    end = _ANS_HEAD.size + 2 * alphabet
    if alphabet < 1 or len(payload) < end:
        raise CodedStreamError("ANS payload is truncated (symbol model)")
    freqs = np.frombuffer(payload[_ANS_HEAD.size : end], dtype="<u2").astype(np.uint16)
    if alphabet == 1:
        return np.full(count, lo, dtype=np.int64)
    rest = payload[end:]
    if len(rest) % 4 or not freqs.any():
        raise CodedStreamError("ANS payload is corrupt (words not whole 32-bit units or an empty model)")
    words = np.frombuffer(rest, dtype="<u4").astype(np.uint32)
    coder = constriction.stream.stack.AnsCoder(words)
    sym = coder.decode(_model(freqs), int(count)).astype(np.int64)
    if not coder.is_empty():
        raise CodedStreamError("ANS stream did not end where its symbol count says (corrupt)")
    return sym + lo


# ---------------------------------------------------------------- byte streams


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=12).compress(data)


def _unzstd(payload: bytes) -> bytes:
    import zstandard

    try:
        return zstandard.ZstdDecompressor().decompress(payload)
    except zstandard.ZstdError as e:
        raise CodedStreamError(f"zstd payload is corrupt: {e}") from e


def _container(parts: list[bytes]) -> bytes:
    return struct.pack("<I", len(parts)) + b"".join(struct.pack("<Q", len(p)) + p for p in parts)


def _uncontainer(payload: bytes) -> list[bytes]:
    try:
        (k,) = struct.unpack_from("<I", payload)
        pos, parts = 4, []
        for _ in range(k):
            (size,) = struct.unpack_from("<Q", payload, pos)
            pos += 8
            if pos + size > len(payload):
                raise CodedStreamError("container part runs past the payload (corrupt)")
            parts.append(payload[pos : pos + size])
            pos += size
    except struct.error as e:
        raise CodedStreamError(f"container payload is truncated: {e}") from e
    return parts


def encode_bytes(data: bytes, element_size: int = 1) -> bytes:
    """The smallest frame of ``data``: raw, zstd, or ANS of its byte planes."""
    data = bytes(data)
    cands = [frame(RAW, data), frame(ZSTD, _zstd(data))]
    if data and len(data) % element_size == 0:
        planes = np.frombuffer(data, dtype=np.uint8).reshape(-1, element_size).T
        head = struct.pack("<B", element_size)
        cands.append(frame(ANS_PLANES, head + _container([ans_encode(p) for p in planes])))
    return min(cands, key=len)


def encode_symbols(values: np.ndarray) -> bytes:
    """Frame of an integer array ``[n, c]`` (or [n]): ANS of all values, or per column and byte digit."""
    v = np.asarray(values).astype(np.int64)
    shape = v.shape
    v2 = v.reshape(shape[0] if v.ndim else 1, -1) if v.size else v.reshape(0, 1)
    head = struct.pack("<B", len(shape)) + struct.pack(f"<{len(shape)}q", *shape)
    if v.size == 0 or int(v.max()) - int(v.min()) < _DIGIT:
        return frame(SYMBOLS, head + struct.pack("<B", 0) + ans_encode(v))
    parts = []
    for c in range(v2.shape[1]):
        col = v2[:, c]
        lo = int(col.min())
        rel = col - lo
        top = int(rel.max())
        digits = max(1, (top.bit_length() + 7) // 8)
        parts.append(struct.pack("<qB", lo, digits))
        parts.extend(ans_encode((rel >> (8 * d)) & 255) for d in range(digits))
    return frame(SYMBOLS, head + struct.pack("<B", 1) + _container(parts))


def decode_symbols(payload: bytes) -> np.ndarray:
    """Inverse of :func:`encode_symbols` (payload of a SYMBOLS frame): int64 array."""
    try:
        (ndim,) = struct.unpack_from("<B", payload)
        shape = struct.unpack_from(f"<{ndim}q", payload, 1)
        pos = 1 + 8 * ndim
        (kind,) = struct.unpack_from("<B", payload, pos)
    except struct.error as e:
        raise CodedStreamError(f"symbol stream header is truncated: {e}") from e
    body = payload[pos + 1 :]
    total = int(np.prod(shape)) if ndim else 1
    if kind == 0:
        out = ans_decode(body)
    else:
        parts = _uncontainer(body)
        cols, i = [], 0
        while i < len(parts):
            lo, digits = struct.unpack("<qB", parts[i])
            col = np.zeros(0, dtype=np.int64)
            for d in range(digits):
                dv = ans_decode(parts[i + 1 + d])
                col = dv if d == 0 else col + (dv << (8 * d))
            cols.append(col + lo)
            i += 1 + digits
        out = np.stack(cols, axis=1) if cols else np.zeros(0, dtype=np.int64)
    if out.size != total:
        raise CodedStreamError(f"symbol stream holds {out.size} values, its header says {total} (corrupt)")
    return out.reshape(shape)


def encode_fields(fields: dict[str, np.ndarray]) -> bytes:
    """One frame of named integer arrays, each a ``symbols`` frame."""
    parts = []
    for name, values in fields.items():
        parts += [name.encode(), encode_symbols(values)]
    return frame(FIELDS, _container(parts))


def decode_fields(blob: bytes) -> dict[str, np.ndarray]:
    """Inverse of :func:`encode_fields`."""
    method, payload = unframe(blob)
    if method != FIELDS:
        raise CodedStreamError(f"expected a fields stream, got {METHOD_NAMES[method]} (corrupt)")
    parts = _uncontainer(payload)
    if len(parts) % 2:
        raise CodedStreamError("fields stream is corrupt (odd number of parts)")
    out = {}
    for i in range(0, len(parts), 2):
        values = decode(parts[i + 1])
        if not isinstance(values, np.ndarray):
            raise CodedStreamError("fields stream is corrupt (a field is not a symbol stream)")
        out[parts[i].decode("utf-8", "replace")] = values
    return out


def decode(blob: bytes) -> bytes | np.ndarray:
    """Decode any frame but ``fields``: bytes for raw / zstd / ans-planes, an int64 array for symbols."""
    method, payload = unframe(blob)
    if method == FIELDS:
        raise CodedStreamError("a fields stream decodes with decode_fields")
    if method == RAW:
        return payload
    if method == ZSTD:
        return _unzstd(payload)
    if method == SYMBOLS:
        return decode_symbols(payload)
    if method == ANS:
        return ans_decode(payload)
    (size,) = struct.unpack_from("<B", payload)
    planes = [ans_decode(p) for p in _uncontainer(payload[1:])]
    if len(planes) != size or len({p.size for p in planes}) > 1:
        raise CodedStreamError("byte-plane stream is corrupt (planes of different sizes)")
    return np.stack(planes, axis=1).astype(np.uint8).tobytes()
