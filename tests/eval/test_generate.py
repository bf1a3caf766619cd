"""``pvq generate``: greedy and seeded sampling on the reference model, tokens per second."""

import json

import pytest

from pvq.cli import main
from pvq.eval import runs
from pvq.eval.generate import GenerateConfig, GenerateError, generate


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

