"""Checkpoints of older format versions still load and give the logits they gave when they were
written: version 1 (before ``layout`` and codec ``options``; tests/data/v1), 2 and 3 (before
rotation plans; tests/data/v2, v3, written by the code of commits e79c22e^ and 4300733 with a
tiny Llama, 8 calibration windows of 32 tokens)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import pvq  # noqa: F401  (registers the transformers quantizer)
from pvq.models import QuantizeConfig, load_quantized, read_quantization_config
from tiny_models import quantized
from transformers import AutoModelForCausalLM

DATA = Path(__file__).resolve().parent.parent / "data" / "v1"


@pytest.mark.parametrize("method", ["pvq", "gptq", "codebook"])
@pytest.mark.parametrize("via", ["transformers", "direct"])
def test_version_1_checkpoints_load_with_identical_logits(method, via):
    path = DATA / method
    q = read_quantization_config(path)
    assert q["format_version"] == 1 and "layout" not in next(iter(q["modules"].values()))
    expected = load_file(str(path / "expected_logits.safetensors"))
    model = load_quantized(path, via=via) if via == "direct" else AutoModelForCausalLM.from_pretrained(path)
    assert len(quantized(model)) == 14
    assert all(m.layout == "stored" for m in quantized(model).values())
    with torch.no_grad():
        logits = model(input_ids=expected["input_ids"]).logits
    assert torch.equal(logits, expected["logits"])
    # the flat version-1 config reads into today's QuantizeConfig
    config = QuantizeConfig.from_dict(q["config"])
    assert config.method == method


def test_version_1_flat_options_map_to_codec_options():
    raw = json.loads((DATA / "codebook" / "config.json").read_text())["quantization_config"]["config"]
    assert raw["codebook_weighting"] == "hessian"  # the v1 field name
    assert QuantizeConfig.from_dict(raw).options == {}  # at its default: no option set
    assert QuantizeConfig.from_dict({**raw, "codebook_weighting": "obs"}).options == {"weighting": "obs"}


OLD = Path(__file__).resolve().parent.parent / "data"


@pytest.mark.parametrize("fixture", ["v2/pvq", "v2/gptq", "v3/pvq", "v3/gptq", "v3/pvq-a4"])
@pytest.mark.parametrize("via", ["transformers", "direct"])
def test_version_2_and_3_checkpoints_load_with_identical_logits(fixture, via):
    """Written by the code of their format version (tiny Llama, per-layer rotations): today's loaders
    give them the logits they gave then, and read their rotations as the layer plan."""
    path = OLD / fixture
    q = read_quantization_config(path)
    assert q["format_version"] == int(fixture[1]) and "rotation" not in q
    expected = load_file(str(path / "expected_logits.safetensors"))
    model = load_quantized(path, via=via) if via == "direct" else AutoModelForCausalLM.from_pretrained(path)
    layers = quantized(model)
    assert len(layers) == 14
    assert all((m.rotation is not None) == fixture.endswith(("pvq", "pvq-a4")) for m in layers.values())
    assert all(m.rotation is None or m.rotation.online_rotations == 2 for m in layers.values())
    assert all((m.act_quant is not None) == fixture.endswith("a4") for m in layers.values())
    with torch.no_grad():
        logits = model(input_ids=expected["input_ids"]).logits
    assert torch.equal(logits, expected["logits"])
    config = QuantizeConfig.from_dict(q["config"])
    assert config.rotation_plan == ("layer" if "pvq" in fixture else "none")
