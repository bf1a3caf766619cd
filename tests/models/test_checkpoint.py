"""Checkpoints: safetensors + quantization_config, reload through transformers with identical
logits and codes, the direct loader, atomic writes."""

import json
import os
import subprocess
import sys

import pytest
import torch

import pvq  # noqa: F401  (registers the transformers quantizer)
from pvq.errors import CheckpointError, QuantizeError
from pvq.models import QuantizeConfig, load_quantized, quantize_model, save_quantized
from pvq.models import checkpoint as ckpt_mod
from tiny_models import FAMILIES, X, char_tokenizer, quantized, tiny
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast


def quantize(family: str, method: str = "pvq", **cfg):
    model = tiny(family, **cfg.pop("model_extra", {}))
    ids = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(1))
    config = QuantizeConfig(method=method, bits=cfg.pop("bits", 3), **cfg)
    report = quantize_model(model, ids, config, progress=False, log=None)
    return model, report


def assert_same_model(a, b):
    qa, qb = quantized(a), quantized(b)
    assert qa.keys() == qb.keys() and len(qa) == 14
    for name, m in qa.items():
        other = qb[name]
        assert other.codec_config == m.codec_config and other.rotation == m.rotation
        for key, t in m.stored_tensors().items():
            u = other.stored_tensors()[key]
            assert u.dtype == t.dtype and torch.equal(u, t), (name, key)  # bit-identical codes and scales
    with torch.no_grad():
        assert torch.equal(a(input_ids=X).logits, b(input_ids=X).logits)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each family quantized with pvq and saved with a tokenizer (Llama with tied embeddings)."""
    out = {}
    tok = char_tokenizer()
    for family in FAMILIES:
        extra = {"model_extra": {"tie_word_embeddings": True}} if family == "llama" else {}
        model, report = quantize(family, dim=16, **extra)
        path = tmp_path_factory.mktemp("ckpt") / family
        save_quantized(model, path, report, tokenizer=tok)
        out[family] = (model, report, path)
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_from_pretrained_rebuilds_identical_model(saved, family):
    model, report, path = saved[family]
    loaded = AutoModelForCausalLM.from_pretrained(path)
    assert type(loaded) is type(model)
    assert_same_model(model, loaded)
    assert loaded.dtype == torch.float32
    direct = load_quantized(path, via="direct")
    assert_same_model(model, direct)


def test_checkpoint_layout_and_config(saved):
    model, report, path = saved["llama"]
    files = sorted(os.listdir(path))
    assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    assert not any(p.name.startswith(f".{path.name}.") for p in path.parent.iterdir())  # no temp dirs left
    q = json.loads((path / "config.json").read_text())["quantization_config"]
    assert q["quant_method"] == "pvq" and q["method"] == "pvq" and q["bits"] == 3.0
    assert q["bits_per_weight"] == pytest.approx(report.bits_per_weight)
    assert q["pvq_version"] == pvq.__version__ and q["config"] == report.config.to_dict()
    mod = q["modules"]["model.layers.1.mlp.down_proj"]
    assert mod["codec"]["name"] == "pvq" and mod["codec"]["dim"] == 16 and mod["codec"]["group_size"] == 11
    assert set(mod["rotation"]) == {"out_seed", "in_seed"}
    assert (mod["in_features"], mod["out_features"]) == (176, 64)
    r = json.loads((path / "quantize_report.json").read_text())
    assert r["bits_per_weight"] == report.bits_per_weight and len(r["layers"]) == 14
    tok = PreTrainedTokenizerFast.from_pretrained(path)
    assert tok.encode("def f():", add_special_tokens=False) == char_tokenizer().encode("def f():", add_special_tokens=False)


@pytest.mark.parametrize("first", [
    "import pvq",
    "import pvq.models.hf_quantizer",
    "import pvq.kernels",
    "import transformers.quantizers.auto; from transformers import AutoModelForCausalLM; import pvq.models.checkpoint",
])
def test_import_pvq_registers_before_transformers_loads(saved, tmp_path, first):
    """In a fresh process: a pvq import first (whichever), then from_pretrained; codes and logits as saved."""
    model, _, path = saved["qwen2"]
    with torch.no_grad():
        expect = model(input_ids=X).logits
    from safetensors.torch import save_file

    save_file({"x": X, "logits": expect.contiguous()}, str(tmp_path / "expect.safetensors"))
    code = (
        f"import sys, torch\n{first}\n"
        + ("assert 'transformers.quantizers.auto' not in sys.modules\n" if first == "import pvq" else "")
        + "from safetensors.torch import load_file\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(path)!r})\n"
        f"e = load_file({str(tmp_path / 'expect.safetensors')!r})\n"
        "with torch.no_grad(): out = m(input_ids=e['x']).logits\n"
        "assert type(m.model.layers[0].self_attn.q_proj).__name__ == 'QuantizedLinear'\n"
        "assert torch.equal(out, e['logits'])\n"
        "print('OK')\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("OK"), run.stderr[-3000:]


def test_loading_without_the_registered_quantizer_is_refused(saved, monkeypatch):
    """transformers loads an unknown quant_method as a random plain model: load_quantized refuses it."""
    from transformers.quantizers import auto

    import pvq.models.checkpoint as ck

    _, _, path = saved["qwen2"]
    monkeypatch.setattr(ck, "register", lambda: False)
    monkeypatch.delitem(auto.AUTO_QUANTIZER_MAPPING, "pvq")
    monkeypatch.delitem(auto.AUTO_QUANTIZATION_CONFIG_MAPPING, "pvq")
    with pytest.raises(CheckpointError, match="without its quantized modules .* not registered"):
        load_quantized(path, via="transformers")


@pytest.mark.parametrize("method", ["gptq", "rtn", "e8"])
def test_other_methods_round_trip(method, tmp_path):
    model, report = quantize("mistral", method, bits=4 if method != "e8" else 2)
    save_quantized(model, tmp_path / method, report)
    assert_same_model(model, AutoModelForCausalLM.from_pretrained(tmp_path / method))


def test_save_is_atomic_when_interrupted(tmp_path, monkeypatch):
    model, report = quantize("llama", dim=16, rotate=False)
    target = tmp_path / "out"

    def crash(root):  # all files written, before the rename into place
        assert (root / "model.safetensors").is_file()
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(ckpt_mod, "_fsync_tree", crash)
    with pytest.raises(KeyboardInterrupt):
        save_quantized(model, target, report)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary directory is cleaned up
    # an existing checkpoint survives an interrupted overwrite
    monkeypatch.undo()
    save_quantized(model, target, report)
    before = sorted(os.listdir(target))
    monkeypatch.setattr(ckpt_mod, "_fsync_tree", crash)
    with pytest.raises(KeyboardInterrupt):
        save_quantized(model, target, report, overwrite=True)
    assert sorted(os.listdir(target)) == before
    assert_same_model(model, load_quantized(target))
    monkeypatch.undo()
    with pytest.raises(QuantizeError, match="not empty.*overwrite=True"):
        save_quantized(model, target, report)
    save_quantized(model, target, report, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_checkpoint_that_does_not_match_its_config_is_refused(tmp_path):
    model, report = quantize("llama", dim=16, rotate=False)
    path = save_quantized(model, tmp_path / "ck", report)
    cfg = json.loads((path / "config.json").read_text())
    spec = cfg["quantization_config"]["modules"]["model.layers.0.self_attn.q_proj"]["tensors"]["codes"]
    spec["shape"] = [spec["shape"][0] + 1]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(QuantizeError, match="config entry of model.layers.0.self_attn.q_proj was edited"):
        load_quantized(path)
    # a version-1 checkpoint (no integrity record) gets the structural check
    del cfg["quantization_config"]["integrity"]
    cfg["quantization_config"]["format_version"] = 1
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(QuantizeError, match="does not match its quantization_config.*q_proj.packed_codes"):
        load_quantized(path)
    with pytest.raises(QuantizeError, match="not a pvq-quantized checkpoint"):
        model2 = tiny("llama")
        model2.save_pretrained(tmp_path / "plain")
        load_quantized(tmp_path / "plain")
    with pytest.raises(QuantizeError, match="no QuantizedLinear"):
        save_quantized(tiny("llama"), tmp_path / "x", report)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_quantize_save_and_reload(tmp_path):
    model = tiny("qwen2")
    ids = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(1))
    report = quantize_model(model, ids, QuantizeConfig(method="pvq", bits=3, dim=16), device="cuda",
                            progress=False, log=None)
    assert report.device.startswith("cuda")
    assert all(t.device.type == "cpu" for t in model.state_dict().values())  # blocks moved back home
    assert all(m.runtime_tensors() == {} for m in quantized(model).values())  # device caches dropped
    save_quantized(model, tmp_path / "c", report)
    model.to("cuda")
    loaded = load_quantized(tmp_path / "c", device="cuda")
    x = X.to("cuda")
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, loaded(input_ids=x).logits)
    assert all(0 < s.relative_error < 0.2 for s in report.layers)
