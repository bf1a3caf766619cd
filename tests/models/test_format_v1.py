"""Checkpoints written before the format gained ``layout`` and codec ``options`` (version 1) still load
and give the logits they gave when they were written (tests/data/v1, made by the pre-change code)."""

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
