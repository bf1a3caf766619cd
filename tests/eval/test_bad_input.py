"""Bad input fails before the work (before any model loading where it can be known then),
with exit code 2 and one line that says what to change; never a traceback."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import pvq.eval.runs as runs
from pvq.cli import main
from pvq.models.reference import REFERENCE_DIR


@pytest.fixture(scope="module")
def fp16_model_dir(tmp_path_factory):
    """A tiny Llama stored in float16 (context 256) with the reference tokenizer."""
    path = tmp_path_factory.mktemp("fp16")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=8192, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).to(torch.float16).save_pretrained(path)
    AutoTokenizer.from_pretrained(REFERENCE_DIR).save_pretrained(path)
    return path


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if a model's weights start loading."""
    def boom(*a, **k):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(runs, "load_model", boom)


def one_line_error(capsys, rc, *needles):
    """Exit code 2 and one error line (transformers' own progress bars aside), no traceback."""
    raw = capsys.readouterr().err
    err = [line for line in raw.strip().splitlines() if not line.startswith("Loading weights")]
    assert rc == 2, raw
    assert len(err) == 1 and err[0].startswith("pvq "), err
    for n in needles:
        assert n in err[0], err[0]
    assert "Traceback" not in raw


QUICK = ["--samples", "2", "--seq-len", "16"]


def test_output_under_a_regular_file(fp16_model_dir, tmp_path, capsys, no_model_loading):
    f = tmp_path / "file"
    f.write_text("x")
    rc = main(["quantize", str(fp16_model_dir), *QUICK, "--output", str(f / "out")])
    one_line_error(capsys, rc, "cannot write a checkpoint", "writable output directory")


def test_output_under_proc(fp16_model_dir, capsys, no_model_loading):
    rc = main(["quantize", str(fp16_model_dir), *QUICK, "--output", "/proc/pvq-out"])
    one_line_error(capsys, rc, "cannot write a checkpoint at '/proc/pvq-out'")


def test_output_that_is_a_file_even_with_overwrite(fp16_model_dir, tmp_path, capsys, no_model_loading):
    f = tmp_path / "file"
    f.write_text("x")
    rc = main(["quantize", str(fp16_model_dir), *QUICK, "--output", str(f), "--overwrite"])
    one_line_error(capsys, rc, "is a file, not a checkpoint directory")


def test_overwrite_refuses_a_directory_that_is_not_a_checkpoint(fp16_model_dir, tmp_path, capsys, no_model_loading):
    d = tmp_path / "notes"
    d.mkdir()
    (d / "todo.txt").write_text("keep me")
    rc = main(["quantize", str(fp16_model_dir), *QUICK, "--output", str(d), "--overwrite"])
    one_line_error(capsys, rc, "not a checkpoint")
    assert (d / "todo.txt").read_text() == "keep me"


@pytest.mark.parametrize("device, needle", [("foo", "unknown device 'foo'"), ("cuda:99", "cuda")])
@pytest.mark.parametrize("command", ["quantize", "eval"])
def test_bad_device(fp16_model_dir, capsys, no_model_loading, command, device, needle):
    rc = main([command, str(fp16_model_dir), "--device", device] + (QUICK if command == "quantize" else []))
    one_line_error(capsys, rc, needle)


def test_rate_not_below_fp16(fp16_model_dir, capsys, no_model_loading):
    rc = main(["quantize", str(fp16_model_dir), "--bits", "17"])
    one_line_error(capsys, rc, "not compression", "below 16")


def test_calibration_window_longer_than_the_context(fp16_model_dir, capsys, no_model_loading):
    rc = main(["quantize", str(fp16_model_dir), "--samples", "2", "--seq-len", "2000"])
    one_line_error(capsys, rc, "--seq-len=2000 is longer than the model's context of 256")


@pytest.mark.parametrize("args, needle", [
    (["--context", "5000"], "--context=5000 is longer than the model's context of 256"),
    (["--context", "0"], "context must be an integer >= 2"),
    (["--context", "64", "--stride", "0"], "stride must be an integer >= 1"),
    (["--context", "64", "--stride", "65"], "stride=65 is longer than context=64"),
])
def test_bad_eval_windows(fp16_model_dir, capsys, no_model_loading, args, needle):
    rc = main(["eval", str(fp16_model_dir), *args])
    one_line_error(capsys, rc, needle)


@pytest.mark.parametrize("content, needle", [(b"\x7fELF\x02\x01\x01\x00\x00\x00", "binary file"),
                                             (b"caf\xe9 au lait\n" * 10, "not UTF-8 text")])
def test_calibration_text_that_is_not_utf8_text(fp16_model_dir, tmp_path, capsys, no_model_loading, content, needle):
    f = tmp_path / "calib.txt"
    f.write_bytes(content)
    rc = main(["quantize", str(fp16_model_dir), *QUICK, "--calib", str(f)])
    one_line_error(capsys, rc, needle)


@pytest.mark.parametrize("tensor", ["model.layers.1.mlp.down_proj.weight", "model.norm.weight"])
def test_non_finite_weights_are_named_before_any_quantization(fp16_model_dir, tmp_path, capsys, monkeypatch, tensor):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(fp16_model_dir, bad)
    tensors = load_file(str(bad / "model.safetensors"))
    tensors[tensor][0, ...] = float("nan") if tensors[tensor].dim() > 1 else tensors[tensor][0]
    if tensors[tensor].dim() == 1:
        tensors[tensor][0] = float("inf")
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})

    def boom(*a, **k):
        raise AssertionError("quantization started")

    monkeypatch.setattr(runs, "quantize_model", boom)
    rc = main(["quantize", str(bad), *QUICK])
    one_line_error(capsys, rc, f"tensor {tensor} holds", "non-finite")


def test_checkpoint_keeps_the_source_dtype_and_loads_in_it(fp16_model_dir, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", str(fp16_model_dir), "--dim", "8", *QUICK, "--output", str(out), "--json"]) == 0
    capsys.readouterr()
    stored = load_file(str(out / "model.safetensors"))
    assert stored["model.embed_tokens.weight"].dtype == torch.float16  # as in the source, not float32
    assert stored["model.norm.weight"].dtype == torch.float16
    assert main(["eval", str(out), "--eval-tokens", "200", "--context", "64", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["dtype"] == "float16" and ev["perplexity"] == ev["perplexity"] and ev["perplexity"] < 1e5
