"""End-to-end CLI runs (quantize -> save -> eval, demo) on a tiny Llama with the reference tokenizer."""

import json

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from pvq.cli import main
from pvq.models.reference import CALIB_TEXT, REFERENCE_DIR


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=8192, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(REFERENCE_DIR).save_pretrained(path)
    return path


def test_quantize_save_eval_round_trip(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "q"
    rc = main(["quantize", str(tiny_model_dir), "--method", "pvq", "--bits", "3", "--dim", "8",
               "--calib", str(CALIB_TEXT), "--samples", "4", "--seq-len", "32", "--output", str(out), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["output"] == str(out) and 2.5 < summary["bits_per_weight"] <= 3.0
    assert main(["eval", str(out), "--eval-tokens", "600", "--context", "128", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["bits_per_weight"] == pytest.approx(summary["bits_per_weight"])  # measured from the checkpoint
    assert main(["eval", str(tiny_model_dir), "--eval-tokens", "600", "--context", "128", "--json"]) == 0
    base = json.loads(capsys.readouterr().out)
    assert ev["tokens"] == base["tokens"] == 595  # 600 tokens in windows of 128: 4 x 127 + 87 scored
    # a random model at 3 bits scores close to the unquantized one (NaN fails every comparison)
    assert abs(ev["perplexity"] / base["perplexity"] - 1) < 0.05
    # generate from the checkpoint says what its quantized layers hold against what they store
    assert main(["generate", str(out), "--prompt", "def ", "--max-new-tokens", "3", "--json"]) == 0
    mem = json.loads(capsys.readouterr().out)["memory"]
    assert 0 < mem["stored_bytes"] <= mem["held_bytes"] < mem["model_bytes"]
    assert main(["generate", str(out), "--prompt", "def ", "--max-new-tokens", "3"]) == 0
    assert f"x their {mem['stored_bytes'] / 1e6:.1f} MB stored" in capsys.readouterr().err
    # writing over an existing checkpoint needs --overwrite, and fails before any work
    rc = main(["quantize", str(tiny_model_dir), "--bits", "3", "--output", str(out), "--json"])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err


def test_quantize_with_chunked_online_rotations_from_the_cli(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "q"
    rc = main(["quantize", str(tiny_model_dir), "--method", "pvq", "--bits", "3", "--dim", "8", "--rotation-block",
               "16", "--calib", str(CALIB_TEXT), "--samples", "4", "--seq-len", "32", "--output", str(out), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rotation_plan"] == "fused" and summary["rotation_blocks"] == [16]  # intermediate 176 = 11 x 16
    assert json.loads((out / "config.json").read_text())["quantization_config"]["format_version"] == 5
    assert main(["eval", str(out), "--eval-tokens", "300", "--context", "128", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rotation_blocks"] == [16]
    # a chunk that does not divide down_proj's input: refused before the model is quantized
    rc = main(["quantize", str(tiny_model_dir), "--bits", "3", "--rotation-block", "32", "--calib", str(CALIB_TEXT),
               "--samples", "4", "--seq-len", "32", "--output", str(tmp_path / "r"), "--json"])
    err = capsys.readouterr().err
    assert rc == 2 and "does not divide the 176 inputs" in err and not (tmp_path / "r").exists()


def test_quantize_the_tied_tables_from_the_cli(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "q"
    rc = main(["quantize", str(tiny_model_dir), "--method", "pvq", "--bits", "3", "--quantize-head",
               "--quantize-embedding", "--calib", str(CALIB_TEXT), "--samples", "4", "--seq-len", "32",
               "--output", str(out), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert 2.5 < summary["embedding_bits_per_weight"] <= 3.0 and 2.5 < summary["lm_head_bits_per_weight"] <= 3.0
    assert main(["eval", str(out), "--eval-tokens", "300", "--context", "128", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["embedding_bits_per_weight"] == pytest.approx(summary["embedding_bits_per_weight"])
    assert ev["lm_head_bits_per_weight"] == pytest.approx(summary["lm_head_bits_per_weight"])
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    # one table of a tied pair alone: refused before the model is quantized
    rc = main(["quantize", str(tiny_model_dir), "--bits", "3", "--quantize-embedding", "--calib", str(CALIB_TEXT),
               "--samples", "4", "--seq-len", "32", "--output", str(tmp_path / "r")])
    assert rc == 2 and "add --quantize-head" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_eval_of_plain_model_reports_stored_dtype(tiny_model_dir, capsys):
    assert main(["eval", str(tiny_model_dir), "--eval-tokens", "300", "--context", "128", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["bits_per_weight"] == 32.0  # saved in float32


def test_demo_json_rows(tiny_model_dir, capsys):
    rc = main(["demo", "--model", str(tiny_model_dir), "--methods", "rtn,pvq", "--bits", "4",
               "--eval-tokens", "400", "--samples", "4", "--seq-len", "32", "--plot", "", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    methods = [r["method"] for r in out["results"]]
    assert methods == ["none", "rtn", "pvq"]
    rows = out["results"]
    assert all({"method", "bits_per_weight", "perplexity"} <= set(r) for r in rows)
    assert rows[0]["bits_per_weight"] == 32.0  # the unquantized model, stored in float32
    assert 4.0 < rows[1]["bits_per_weight"] < 4.5 and 3.5 < rows[2]["bits_per_weight"] <= 4.0  # rtn, pvq
    base = rows[0]["perplexity"]
    assert all(abs(r["perplexity"] / base - 1) < 0.05 for r in rows)  # NaN fails here


def test_demo_rejects_unknown_method_before_work(capsys):
    assert main(["demo", "--methods", "pvq,nope", "--json"]) == 2
    assert "unknown method" in capsys.readouterr().err


def _quantize_then_eval(model_dir, out, capsys, *method_args) -> tuple[dict, dict]:
    """``pvq quantize MODEL <method_args> --json`` then ``pvq eval OUT --json``: both JSON outputs."""
    rc = main(["quantize", str(model_dir), *method_args, "--calib", str(CALIB_TEXT), "--samples", "4",
               "--seq-len", "32", "--output", str(out), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert main(["eval", str(out), "--eval-tokens", "300", "--context", "128", "--json"]) == 0
    return summary, json.loads(capsys.readouterr().out)


def test_quantize_codebook_with_lora_from_the_cli(tiny_model_dir, tmp_path, capsys):
    summary, ev = _quantize_then_eval(tiny_model_dir, tmp_path / "cb", capsys, "--method", "codebook", "--bits", "2",
                                      "--dim", "4", "--lora-steps", "2")
    assert summary["method"] == "codebook" and summary["bits_per_weight"] > 2.0  # codebooks and scales counted
    assert ev["bits_per_weight"] == pytest.approx(summary["bits_per_weight"])


def test_quantize_with_activations_from_the_cli(tiny_model_dir, tmp_path, capsys):
    summary, ev = _quantize_then_eval(tiny_model_dir, tmp_path / "a4", capsys, "--method", "pvq", "--bits", "4",
                                      "--act-bits", "4", "--act-method", "pvq")
    assert 3.8 < summary["bits_per_activation"] <= 4.0 and summary["activation"]["method"] == "pvq"
    assert ev["bits_per_activation"] == pytest.approx(summary["bits_per_activation"])
    assert ev["backends"] == ["act-int"] and 3.5 < ev["bits_per_weight"] <= 4.0
    assert main(["eval", str(tiny_model_dir), "--eval-tokens", "300", "--context", "128", "--json"]) == 0
    base = json.loads(capsys.readouterr().out)
    assert base["bits_per_activation"] == 32.0  # unquantized activations of a float32 model
    assert abs(ev["perplexity"] / base["perplexity"] - 1) < 0.1  # NaN fails
    # rtn activations need rotated weights for --act-rotate; refused before any work
    rc = main(["quantize", str(tiny_model_dir), "--method", "rtn", "--bits", "4", "--act-bits", "4",
               "--act-method", "rtn", "--act-rotate", "--json"])
    assert rc == 2 and "--rotate" in capsys.readouterr().err
