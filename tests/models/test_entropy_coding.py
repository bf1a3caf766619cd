"""Entropy-coded checkpoints (``entropy_code=True``): bit-exact reload through both loaders,
both rates in the config, corrupt streams refused naming the layer."""

import json

import pytest
import torch

import pvq  # noqa: F401  (registers the transformers quantizer)
from pvq.codecs.coded import EntropyCodedCodec
from pvq.errors import CheckpointError
from pvq.models import QuantizeConfig, load_quantized, quantize_model, save_quantized
from pvq.models.coding import decode_entropy_coded, entropy_code_model
from pvq.models.format import block_rate
from tiny_models import X, calib, quantized, tiny


def _quantized(method, bits=3, **kw):
    model = tiny("llama")
    kw.setdefault("entropy_code", True)
    report = quantize_model(model, calib(), QuantizeConfig(method=method, bits=bits, **kw),
                            progress=False, log=None)
    return model, report


@pytest.mark.parametrize("method", ["gptq", "pvq"])
def test_coded_checkpoint_reloads_bit_exactly(method, tmp_path):
    model, report = _quantized(method)
    with torch.no_grad():
        ref = model(input_ids=X).logits
    before = {n: {k: v.clone() for k, v in m.stored_tensors().items()} for n, m in quantized(model).items()}
    path = save_quantized(model, tmp_path / method, report)
    with torch.no_grad():  # the in-memory model is decoded back after the save
        assert torch.equal(model(input_ids=X).logits, ref)
    q = json.loads((path / "config.json").read_text())["quantization_config"]
    assert q["bits_per_weight"] == pytest.approx(report.bits_per_weight)  # fixed rate, as without coding
    assert q["stored_bits_per_weight"] < q["bits_per_weight"]  # the bytes on disk after coding
    coded = [n for n, c in q["modules"].items() if c["codec"]["name"] == EntropyCodedCodec.name]
    assert coded and all(all(t["dtype"] == "uint8" for t in q["modules"][n]["tensors"].values()) for n in coded)
    for via in ("transformers", "direct"):
        loaded = load_quantized(path, via=via)
        layers = quantized(loaded)
        assert all(not isinstance(m.codec, EntropyCodedCodec) for m in layers.values())
        for n, m in layers.items():  # the codec's own stored tensors, bit for bit
            assert all(torch.equal(v, before[n][k]) for k, v in m.stored_tensors().items())
        with torch.no_grad():
            assert torch.equal(loaded(input_ids=X).logits, ref)
        rate = block_rate(loaded)
        assert rate["coded_bits"] < rate["stored_bits"]


@pytest.mark.parametrize("method", ["gptq", "ecsq"])
def test_corrupt_coded_stream_is_refused_naming_the_layer(method):
    model, _ = _quantized(method, entropy_code=False)
    if method == "gptq":
        assert entropy_code_model(model) > 0
    coded = (EntropyCodedCodec.name, "ecsq")
    name, layer = next((n, m) for n, m in quantized(model).items() if m.codec.name in coded)
    key = next(k for k in layer.stored_keys if k != "scale")
    buf = getattr(layer, "packed_" + key)
    buf[buf.numel() // 2] ^= 0x40
    with pytest.raises(CheckpointError, match=f"layer {name}: .*corrupt"):
        decode_entropy_coded(model)


def test_corrupt_checkpoint_file_is_refused(tmp_path):
    model, report = _quantized("ecsq", entropy_code=False)
    path = save_quantized(model, tmp_path / "e", report)
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-40] ^= 0x01  # inside the last tensor's bytes
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_quantized(path)


def test_config_key_is_optional():
    cfg = QuantizeConfig(method="gptq", entropy_code=True)
    assert QuantizeConfig.from_dict(cfg.to_dict()).entropy_code is True
    old = {k: v for k, v in cfg.to_dict().items() if k != "entropy_code"}  # written before the key existed
    assert QuantizeConfig.from_dict(old).entropy_code is False
    with pytest.raises(Exception, match="entropy_code must be True or False"):
        QuantizeConfig(entropy_code="yes")
