"""The integrity record: a checkpoint that is not what was written is refused on every load path,
naming the part that is wrong (missing, extra, truncated or edited)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import pvq  # noqa: F401  (registers the transformers quantizer)
from pvq.errors import CheckpointError
from pvq.models import QuantizeConfig, load_quantized, quantize_model, save_quantized
from tiny_models import X, calib, tiny
from transformers import AutoModelForCausalLM

LAYER = "model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = tiny("llama")
    report = quantize_model(model, calib(), QuantizeConfig(method="pvq", bits=3, dim=16, rotation="layer"), progress=False, log=None)
    return save_quantized(model, tmp_path_factory.mktemp("integrity") / "ck", report)


@pytest.fixture
def copy(saved, tmp_path):
    dst = tmp_path / "ck"
    shutil.copytree(saved, dst)
    return dst


def _load_all(path):
    """Every load path: the direct loader, load_quantized through transformers, plain from_pretrained."""
    return [lambda: load_quantized(path, via="direct"), lambda: load_quantized(path),
            lambda: AutoModelForCausalLM.from_pretrained(path)]


def _edit_tensors(path, fn):
    f = path / "model.safetensors"
    tensors = load_file(str(f))
    fn(tensors)
    save_file(tensors, str(f), metadata={"format": "pt"})


def _edit_config(path, fn):
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg["quantization_config"])
    (path / "config.json").write_text(json.dumps(cfg))


def test_an_intact_checkpoint_loads_on_every_path(saved):
    with torch.no_grad():
        logits = [load()(input_ids=X).logits for load in _load_all(saved)]
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])
    record = json.loads((saved / "config.json").read_text())["quantization_config"]["integrity"]
    assert record["algorithm"] == "sha256" and "model.embed_tokens.weight" in record["tensors"]
    assert LAYER in record["modules"] and len(record["modules"]) == 14


CASES = {
    "truncated file": (lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:-1000]),
                       "model.safetensors is truncated"),
    "embedding deleted": (lambda p: _edit_tensors(p, lambda t: t.pop("model.embed_tokens.weight")),
                          "tensor model.embed_tokens.weight is missing"),
    "scales deleted": (lambda p: _edit_tensors(p, lambda t: t.pop(f"{LAYER}.scales")),
                       f"tensor {LAYER}.scales is missing"),
    "codes edited": (lambda p: _edit_tensors(p, lambda t: t[f"{LAYER}.packed_codes"].__setitem__(0, 7)),
                     f"tensor {LAYER}.packed_codes was edited"),
    "tensor added": (lambda p: _edit_tensors(p, lambda t: t.__setitem__("extra.weight", torch.zeros(3))),
                     "tensor extra.weight is not in the record"),
    "layer removed from config and tensors": (
        lambda p: (_edit_config(p, lambda q: q["modules"].pop(LAYER)),
                   _edit_tensors(p, lambda t: [t.pop(k) for k in list(t) if k.startswith(LAYER + ".")])),
        f"quantized module {LAYER} is missing from the config"),
    "gain quantizer edited": (lambda p: _edit_config(p, lambda q: q["modules"][LAYER]["codec"].update(
        gain_quantizer="quantile")), f"config entry of {LAYER} was edited"),
    "rotation seed + 1": (lambda p: _edit_config(p, lambda q: q["modules"][LAYER]["rotation"].update(
        in_seed=q["modules"][LAYER]["rotation"]["in_seed"] + 1)), f"config entry of {LAYER} was edited"),
    "codec name changed": (lambda p: _edit_config(p, lambda q: q["modules"][LAYER]["codec"].update(name="e8")),
                           f"config entry of {LAYER} was edited"),
    "record removed": (lambda p: _edit_config(p, lambda q: q.pop("integrity")), "lacks its integrity record"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_tampered_checkpoint_is_refused_on_every_load_path(copy, case):
    tamper, message = CASES[case]
    tamper(copy)
    for load in _load_all(copy):
        with pytest.raises(CheckpointError, match=message):
            load()


def test_the_cli_refuses_a_tampered_checkpoint_with_one_line(copy, capsys):
    from pvq.cli import main

    CASES["embedding deleted"][0](copy)
    assert main(["eval", str(copy), "--eval-tokens", "64", "--context", "64", "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tensor model.embed_tokens.weight is missing" in err[0]
