"""``pvq generate``: greedy and seeded sampling on the reference model, tokens per second."""

import json
import re

import pytest
import torch

from pvq.cli import main
from pvq.codecs import make_codec
from pvq.eval import runs
from pvq.eval.generate import GenerateConfig, GenerateError, generate
from pvq.models import runtime_tensor_list, set_backend
from quantized_layers import random_layer


@pytest.fixture(scope="module")
def reference():
    return runs.load_model(None)


def test_greedy_is_deterministic_and_writes_python(reference):
    model, tokenizer = reference
    a = generate(model, tokenizer, "import os\nimport ", GenerateConfig(max_new_tokens=12))
    b = generate(model, tokenizer, "import os\nimport ", GenerateConfig(max_new_tokens=12))
    assert a["completion"] == b["completion"] and a["new_tokens"] == 12 and a["greedy"]
    assert a["tokens_per_second"] > 0 and a["prompt_tokens"] > 0


def test_sampling_is_seeded(reference):
    model, tokenizer = reference
    cfg = GenerateConfig(max_new_tokens=16, sample=True, temperature=1.2, seed=7)
    a = generate(model, tokenizer, "def ", cfg)
    b = generate(model, tokenizer, "def ", cfg)
    c = generate(model, tokenizer, "def ", GenerateConfig(max_new_tokens=16, sample=True, temperature=1.2, seed=8))
    assert a["completion"] == b["completion"] and a["seed"] == 7
    assert c["completion"] != a["completion"]


def test_cli_generate_json_and_bad_input(reference, capsys, monkeypatch):
    assert main(["generate", "--prompt", "class ", "--max-new-tokens", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["new_tokens"] == 5 and out["prompt"] == "class " and out["tokens_per_second"] > 0
    assert main(["generate", "--prompt", "class ", "--max-new-tokens", "5", "--json", "--compile"]) == 0
    compiled = json.loads(capsys.readouterr().out)
    assert compiled["decode"] == "static" and compiled["mode"] == "static, compiled"
    assert compiled["completion"] == out["completion"]
    assert 0 < compiled["prefill_seconds"] < compiled["seconds"]  # the time to the first token, within the run's
    assert main(["generate", "--prompt", "class ", "--max-new-tokens", "3", "--decode", "static"]) == 0
    summary = capsys.readouterr().err
    assert re.search(r"prompt \d+ tokens \(prefill [\d.]+ ms\), static", summary), summary

    def no_model(*_, **__):
        raise AssertionError("model loaded before the options were checked")

    monkeypatch.setattr(runs, "load_model", no_model)
    assert main(["generate", "--prompt", "x", "--max-new-tokens", "0"]) == 2
    assert "--max-new-tokens" in capsys.readouterr().err
    assert main(["generate", "--prompt", "x", "--temperature", "0.5"]) == 2
    assert "--sample" in capsys.readouterr().err
    assert main(["generate", "--prompt", ""]) == 2
    assert "--prompt" in capsys.readouterr().err
    assert main(["generate", "--prompt", "x", "--compile", "--decode", "eager"]) == 2
    assert "drop --decode eager" in capsys.readouterr().err
    with pytest.raises(GenerateError, match="positions"):
        generate(*reference, "x" * 10, GenerateConfig(max_new_tokens=5000))



def test_generate_reports_what_the_model_holds(reference):
    """An unquantized model: no quantized bytes; the model's bytes on its device."""
    out = generate(*reference, "x", GenerateConfig(max_new_tokens=2))
    assert out["device"] == "cpu" and out["memory"]["stored_bytes"] == 0 == out["memory"]["held_bytes"]
    assert out["memory"]["model_bytes"] == runs.model_memory_bytes(reference[0], "cpu") > 0


def test_quantized_memory_counts_stored_and_runtime_tensors_once():
    """Before a forward the layers hold their stored tensors; after one, also what their backend built (here the
    dense backend's cached weight); tensors off the asked device type are not counted; shared storages once."""
    layers = [random_layer(make_codec("pvq", 3.0, 8, group_size=16), 8, 256, seed=s) for s in (1, 2)]
    model = torch.nn.ModuleList(layers)
    stored = sum(q.stored_bits() // 8 for q in layers)
    before = runs.quantized_memory(model, "cpu")
    assert before["stored_bytes"] == stored and before["held_bytes"] >= stored
    assert before["model_bytes"] == runs.model_memory_bytes(model, "cpu")
    set_backend(model, "dense")
    for q in layers:
        q(torch.randn(1, 256))
    extra = {(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
             for q in layers for t in runtime_tensor_list(q.runtime_tensors())}
    extra -= {(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
              for q in layers for t in q.stored_tensors().values()}
    assert extra  # the dense cache
    after = runs.quantized_memory(model, "cpu")
    assert after["held_bytes"] == before["held_bytes"] + sum(n for _, n in extra)
    assert after["stored_bytes"] == stored
    assert runs.quantized_memory(model, "cuda") == {"stored_bytes": stored, "held_bytes": 0, "model_bytes": 0}
