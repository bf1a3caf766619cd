"""Entropy-coded checkpoints: every quantized layer's stored tensors coded losslessly on save,
decoded into the normal layout on load (the math: :mod:`pvq.codecs.coded`).

* :func:`entropy_code_model` swaps each :class:`QuantizedLinear`'s buffers for its coded
  streams (codec config ``{"name": "entropy-coded", "inner": ..., "tensors": ...}``);
  :func:`decode_entropy_coded` puts the inner codec and tensors back, naming the layer
  when a stream is corrupt. Checkpoints without coded layers are untouched (the layer
  config keys are the ordinary ones; no format version change).
* :func:`layer_bits` gives a layer's fixed-rate bits and its stored (coded) bits.
"""

from __future__ import annotations

from torch import nn

from pvq.codecs.coded import EntropyCodedCodec, entropy_code, entropy_decode
from pvq.codecs.base import codec_to_config
from pvq.errors import CheckpointError, CodecError

from .qlinear import QuantizedLinear, buffer_name

__all__ = ["decode_entropy_coded", "entropy_code_model", "layer_bits"]


def _swap(m: QuantizedLinear, codec, tensors: dict) -> None:
    """Replace the layer's codec and stored buffers (the dense runtime cache stays valid: same weight)."""
    for key in m.stored_keys:
        delattr(m, buffer_name(key))
    m.codec, m.codec_config, m.stored_keys = codec, codec_to_config(codec), list(tensors)
    for key, t in tensors.items():
        m.register_buffer(buffer_name(key), t)


def entropy_code_model(model: nn.Module) -> int:
    """Code every (not yet coded) quantized layer of ``model`` in place, except layers that coding
    would not make smaller (they stay as they are); returns how many were coded."""
    count = 0
    for m in model.modules():
        if isinstance(m, QuantizedLinear) and not isinstance(m.codec, EntropyCodedCodec):
            device = m._buffer_device()
            codec, blobs = entropy_code(m.codec, {k: v.cpu() for k, v in m.stored_tensors().items()}, m.num_vectors)
            if sum(b.numel() * 8 for b in blobs.values()) >= m.stored_bits():
                continue
            _swap(m, codec, {k: v.to(device) for k, v in blobs.items()})
            count += 1
    return count


def decode_entropy_coded(model: nn.Module, where: str = "the model") -> int:
    """Decode every coded layer of ``model`` into its codec's own stored tensors, and decode the
    streams of entropy-coded codecs (``ecsq``) once to check them; remembers each coded layer's
    stored bits (``coded_bits``). :class:`CheckpointError` naming the layer on a bad stream."""
    count = 0
    for name, m in model.named_modules():
        if not isinstance(m, QuantizedLinear):
            continue
        try:
            if isinstance(m.codec, EntropyCodedCodec):
                bits = m.stored_bits()
                device = m._buffer_device()
                inner, tensors = entropy_decode(m.codec, {k: v.cpu() for k, v in m.stored_tensors().items()},
                                                m.num_vectors)
                _swap(m, inner, {k: v.to(device) for k, v in tensors.items()})
                m.coded_bits = bits
                count += 1
            elif getattr(m.codec, "entropy_coded", False):
                m.codes()
        except CodecError as e:
            raise CheckpointError(f"{where}: layer {name}: {e}; the checkpoint is damaged, re-save it") from e
    return count


def layer_bits(m: QuantizedLinear) -> tuple[int, int]:
    """(fixed-rate bits, stored bits) of a layer: equal unless it is or was entropy coded."""
    if isinstance(m.codec, EntropyCodedCodec):
        return m.codec.fixed_rate_bits(), m.stored_bits()
    return m.stored_bits(), getattr(m, "coded_bits", None) or m.stored_bits()
