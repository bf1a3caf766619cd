"""--allocate on a tiny Llama: measured rate at the target, bounds, the plan stored, reloaded and shown."""

import json

import pytest
import torch
from tiny_models import calib, char_tokenizer, quantized, tiny
from transformers import AutoModelForCausalLM

from pvq.eval.runs import run_eval
from pvq.models import QuantizeConfig, load_quantized, quantize_model, read_quantization_config, save_quantized
from pvq.models.allocation import AllocateConfig
from pvq.models.format import FORMAT_VERSION
from pvq.errors import QuantizeError

CFG = dict(method="pvq", bits=2.5, dim=16, n_samples=4, seq_len=32)


@pytest.fixture(scope="module")
def allocated():
    model = tiny("llama")
    lines = []
    report = quantize_model(model, calib(4, 32), QuantizeConfig(**CFG), progress=False, log=lines.append,
                            allocation=AllocateConfig(rows=0.5))
    return model, report, lines


def test_allocated_rate_meets_the_target_from_stored_bytes(allocated):
    model, report, lines = allocated
    q = quantized(model)
    bits = sum(m.stored_bits() for m in q.values()) / sum(m.num_weights for m in q.values())
    assert bits == report.bits_per_weight
    assert 2.49 <= bits <= 2.5  # never above the budget, within 0.01 below it
    rec = report.allocation
    assert rec["predicted_bits"] == sum(m.stored_bits() for m in q.values())  # rows scaled exactly for pvq
    rates = {round(m.stored_bits() / m.num_weights, 3) for m in q.values()}
    assert len(rates) > 1  # layers differ
    assert set(rec["layers"]) == set(q)
    for name, r in rec["layers"].items():
        assert r["bits_per_weight"] == pytest.approx(q[name].stored_bits() / q[name].num_weights)
        assert r["why"] and len(r["candidates"]) > 3
    assert any(line.startswith("allocate:") for line in lines)
    # allocation lowers the summed measured distortion against the uniform run's candidates
    assert rec["distortion"] < sum(r["uniform_distortion"] for r in rec["layers"].values())


def test_plan_is_stored_and_both_loaders_rebuild_per_layer_codecs(allocated, tmp_path):
    model, report, _ = allocated
    save_quantized(model, tmp_path / "ck", report, tokenizer=char_tokenizer())
    qdict = read_quantization_config(tmp_path / "ck")
    assert qdict["allocation"]["target_bits"] == 2.5 and qdict["format_version"] == FORMAT_VERSION
    assert len({json.dumps(m["codec"], sort_keys=True) for m in qdict["modules"].values()}) > 1
    x = calib(2, 16, seed=7)
    with torch.no_grad():
        ref = model(input_ids=x).logits
        for loaded in (AutoModelForCausalLM.from_pretrained(tmp_path / "ck"), load_quantized(tmp_path / "ck", via="direct")):
            assert torch.equal(loaded(input_ids=x).logits, ref)
    data = tmp_path / "t.txt"
    data.write_text("the quick brown fox jumps over the lazy dog\n" * 20)
    out = run_eval(str(tmp_path / "ck"), data=str(data), context=32, stride=32, max_tokens=96)
    assert out["allocation"]["layers"].keys() == qdict["allocation"]["layers"].keys()
    assert out["bits_per_weight"] == pytest.approx(report.bits_per_weight)


def test_bounds_and_block_metric():
    model = tiny("llama")
    alloc = AllocateConfig(metric="block", min_bits=2.25, max_bits=2.75, step=0.25)
    report = quantize_model(model, calib(4, 32), QuantizeConfig(**CFG), progress=False, log=None, allocation=alloc)
    rec = report.allocation
    assert rec["ladder"] == [2.25, 2.5, 2.75] and rec["metric"] == "block"
    for s in report.layers:
        assert 2.0 < s.bits_per_weight <= 2.75
    assert report.bits_per_weight <= 2.5 and report.bits_per_weight > 2.45


def test_output_sensitivity_is_the_mean_squared_output_gradient():
    """One linear checked against autograd by hand; the model is left as it was."""
    from pvq.models.allocation import output_sensitivity

    model = tiny("llama")
    ids = calib(3, 16)
    names = ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    got = output_sensitivity(model, ids, names, torch.device("cpu"), batch_size=2)
    assert all(torch.equal(p, before[n]) and p.requires_grad == grads[n] for n, p in model.named_parameters())
    outs = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o)) for n in names]
    total = dict.fromkeys(names, 0.0)
    for start in (0, 2):
        x = ids[start:start + 2]
        with torch.enable_grad():
            loss = model(input_ids=x, labels=x).loss * (x.shape[0] * (x.shape[1] - 1))
            g = torch.autograd.grad(loss, [outs[n] for n in names])
        for n, gn in zip(names, g):
            total[n] += float(gn.double().pow(2).sum())
    for h in hooks:
        h.remove()
    for n in names:
        want = total[n] / (3 * 16) / model.get_submodule(n).weight.shape[0]
        assert want > 0 and got[n] == pytest.approx(want, rel=1e-6)


def test_fisher_metric_weights_the_proxy_per_layer():
    model = tiny("llama")
    alloc = AllocateConfig(metric="fisher", rows=0.5)
    report = quantize_model(model, calib(4, 32), QuantizeConfig(**CFG), progress=False, log=None, allocation=alloc)
    rec = report.allocation
    assert rec["metric"] == "fisher" and 2.45 < report.bits_per_weight <= 2.5
    proxy = quantize_model(tiny("llama"), calib(4, 32), QuantizeConfig(**CFG), progress=False, log=None,
                           allocation=AllocateConfig(metric="proxy", rows=0.5)).allocation
    assert AllocateConfig().metric == "fisher"  # the default
    ratios = {n: rec["layers"][n]["uniform_distortion"] / proxy["layers"][n]["uniform_distortion"] for n in rec["layers"]}
    assert len({round(r, 6) for r in ratios.values()}) > 1  # a factor of its own per layer


def test_bad_settings_fail_before_work():
    with pytest.raises(QuantizeError, match="metric"):
        AllocateConfig(metric="mse")
    with pytest.raises(QuantizeError, match="above --max-bits"):
        AllocateConfig(min_bits=3, max_bits=2)
    with pytest.raises(QuantizeError, match="allocate-rows"):
        AllocateConfig(rows=0)
    with pytest.raises(QuantizeError, match="outside --min-bits"):
        AllocateConfig(min_bits=3.0).ladder(2.0)
    assert AllocateConfig(step=0.5).ladder(2.0) == [1.0, 1.5, 2.0, 2.5, 3.0]
    model = tiny("llama")
    with pytest.raises(QuantizeError, match="cannot reach 1.5"):  # the target's own codec must exist
        quantize_model(model, calib(4, 32), QuantizeConfig(method="e8", bits=1.5, n_samples=4, seq_len=32),
                       progress=False, log=None, allocation=AllocateConfig(min_bits=1.0))
    if "qwen2_moe" in __import__("tiny_models").FAMILIES:
        with pytest.raises(QuantizeError, match="expert stacks"):
            AllocateConfig().candidates(QuantizeConfig(**CFG), QuantizeConfig(**CFG).plan(tiny("qwen2_moe")))


def test_cli_refuses_bounds_without_allocate(capsys):
    from pvq.cli import main

    assert main(["quantize", "--min-bits", "2"]) == 2
    assert "add --allocate" in capsys.readouterr().err
    assert main(["quantize", "--allocate", "--bits", "2", "--min-bits", "2.5"]) == 2  # before the model loads
    assert "outside --min-bits" in capsys.readouterr().err


def test_a_coarse_ladder_is_allocated_between_its_rungs():
    """e8 has no codec at 2.5 bits: the uniform plan is refused, the allocated run starts from the
    plan at the highest ladder rate below (2.25 fails too, 2.0 builds) and mixes rungs to the budget."""
    model = tiny("llama")
    cfg = QuantizeConfig(method="e8", bits=2.5, n_samples=4, seq_len=32)
    with pytest.raises(QuantizeError, match="2.5"):
        cfg.plan(model)
    lines = []
    report = quantize_model(model, calib(4, 32), cfg, progress=False, log=lines.append,
                            allocation=AllocateConfig(metric="proxy", rows=0.5))
    assert 2.2 < report.bits_per_weight <= 2.5
    assert len({round(s.bits_per_weight, 3) for s in report.layers}) > 1
    assert any("starts from the plan at 2" in line for line in lines)


def test_counting_the_embeddings_spends_their_bits_from_the_budget(capsys):
    from pvq.cli import main
    from pvq.models.allocation import embedding_bits

    model = tiny("llama")
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    n, bits = embedding_bits(model, 16)
    assert n == emb.numel() + (0 if head is emb else head.numel()) and bits == 16 * n
    assert embedding_bits(model)[1] == 8 * sum(t.numel() * t.element_size() for t in {id(emb): emb, id(head): head}.values())
    weights = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)) - (
        0 if head is None else head.numel())
    target = (2.5 * weights + bits) / (weights + n)  # the whole model at this average leaves 2.5 to the layers
    alloc = AllocateConfig(rows=0.5, count_embeddings=True, kept_bits=16, min_bits=2.0, max_bits=3.0)
    report = quantize_model(model, calib(4, 32), QuantizeConfig(**{**CFG, "bits": target}), progress=False,
                            log=None, allocation=alloc)
    rec = report.allocation
    assert rec["embedding_weights"] == n and rec["embedding_bits"] == bits
    assert 2.45 < report.bits_per_weight <= 2.5  # the layers' share, measured from stored bytes
    assert target - 0.01 < rec["predicted_overall_bits_per_weight"] <= target
    with pytest.raises(QuantizeError, match="kept embeddings and LM head"):  # nothing left for the layers
        quantize_model(tiny("llama"), calib(4, 32), QuantizeConfig(**{**CFG, "bits": 2.0}), progress=False,
                       log=None, allocation=AllocateConfig(count_embeddings=True, kept_bits=16))
    assert main(["quantize", "--allocate-count-embeddings"]) == 2
    assert "add --allocate" in capsys.readouterr().err
