"""The layer-by-layer driver on tiny random Llama, Mistral and Qwen2 models (GQA, MLP 176 = 2^4 * 11)."""

import pytest
import torch

from pvq.models import QuantizeConfig, QuantizeReport, quantize_model
from pvq.models.capture import capture_block_inputs, linear_stages, run_block
from tiny_models import FAMILIES, calib, quantized, tiny

PVQ = dict(method="pvq", bits=3, dim=16)  # G adapts per layer: 4 (in 64), 11 (in 176)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_capture_and_block_replay_match_the_full_forward(family):
    """Captured block-0 inputs and per-block kwargs reproduce the model's own hidden states."""
    model = tiny(family)
    ids = calib(5, 24)
    with torch.no_grad():
        ref = model(input_ids=ids, output_hidden_states=True).hidden_states
        batches = capture_block_inputs(model, ids, torch.device("cpu"), batch_size=2)  # 2 + 2 + 1: uneven last batch
        assert [b.hidden.shape[0] for b in batches] == [2, 2, 1]
        hidden = torch.cat([b.hidden for b in batches])
        assert torch.equal(hidden, ref[0])
        for i, block in enumerate(model.model.layers[:-1]):  # the last entry of ref is after the final norm
            for b in batches:
                b.hidden = run_block(block, b, i)
            torch.testing.assert_close(torch.cat([b.hidden for b in batches]), ref[i + 1], rtol=1e-5, atol=1e-5)
    assert "forward" not in model.model.layers[0].__dict__  # recorders removed


def test_stages_group_linears_by_shared_input():
    model = tiny("llama")
    block = model.model.layers[0]
    names = [n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        b = capture_block_inputs(model, calib(2, 16), torch.device("cpu"), 2)[0]
        stages = linear_stages(block, b, 0, names, sequential=True)
        assert stages == [
            ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
            ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"],
        ]
        assert linear_stages(block, b, 0, names, sequential=False) == [sum(stages, [])]


def test_linears_that_share_an_input_share_one_hessian_bit_for_bit():
    """q/k/v and gate/up read one tensor each: one accumulator under each name, holding exactly the
    sum a separate accumulator of that layer's own inputs holds; o and down have their own."""
    from pvq.models.capture import collect_hessians
    from pvq.solvers import HessianAccumulator

    model = tiny("llama")
    block = model.model.layers[0]
    names = [n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        batches = capture_block_inputs(model, calib(5, 16), torch.device("cpu"), 2)
        accs = collect_hessians(block, batches, 0, names, torch.device("cpu"))
        own = {n: HessianAccumulator(block.get_submodule(n).in_features) for n in names}
        hooks = [block.get_submodule(n).register_forward_hook(lambda m, inp, out, n=n: own[n].add(inp[0]))
                 for n in names]
        for b in batches:
            run_block(block, b, 0)
        for h in hooks:
            h.remove()
    assert list(accs) == names
    groups = {}
    for n in names:
        groups.setdefault(id(accs[n]), []).append(n)
        assert accs[n].tokens == own[n].tokens == 5 * 16 and torch.equal(accs[n].sum, own[n].sum)
    assert sorted(groups.values()) == sorted([
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_pvq_quantizes_every_family(family):
    model = tiny(family)
    x = calib(2, 20, seed=5)
    with torch.no_grad():
        ref = model(input_ids=x).logits
    lines = []
    report = quantize_model(model, calib(), QuantizeConfig(**PVQ), progress=family == "llama", log=lines.append)
    assert isinstance(report, QuantizeReport)
    q = quantized(model)
    assert len(q) == 14 and len(report.layers) == 14
    assert not any(isinstance(m, torch.nn.Linear) for m in model.model.layers.modules())
    assert type(model.lm_head) is torch.nn.Linear  # only decoder blocks are quantized
    # measured rate: stored bits of all quantized linears over their weights
    bits = sum(m.stored_bits() for m in q.values())
    weights = sum(m.num_weights for m in q.values())
    assert report.stored_bits == bits and report.num_weights == weights
    assert report.bits_per_weight == pytest.approx(bits / weights)
    assert 2.5 < report.bits_per_weight <= 3.0 + 1e-9
    for s in report.layers:
        # measured 0.010 to 0.031 on every layer of the three families
        assert 0.005 < s.relative_error < 0.04 and s.seconds >= 0 and s.codec.startswith("pvq(D=16")
    assert sum(name in line for line in lines for name in q) == 14  # one log line per layer
    with torch.no_grad():
        out = model(input_ids=x).logits
    assert torch.isfinite(out).all()
    rel = float((out - ref).norm() / ref.norm())
    assert 0 < rel < 0.25  # measured 0.202 (llama, mistral), 0.189 (qwen2)
    d = report.to_dict()
    assert d["method"] == "pvq" and len(d["layers"]) == 14 and d["bits_per_weight"] == report.bits_per_weight


def test_pvq_error_feedback_lowers_the_proxy_loss():
    reports = {}
    for ef in (True, False):
        model = tiny("llama")
        reports[ef] = quantize_model(model, calib(), QuantizeConfig(**PVQ, error_feedback=ef), progress=False, log=None)
    first_stage = {ef: sum(s.proxy_loss for s in r.layers[:3]) for ef, r in reports.items()}  # same Hessians
    assert first_stage[True] < 0.9 * first_stage[False]
    assert reports[True].proxy_loss < reports[False].proxy_loss
    assert reports[True].bits_per_weight == reports[False].bits_per_weight


def test_pvq_switches_change_the_result_and_not_sequential_runs():
    base = tiny("llama")
    ids = calib()
    r_base = quantize_model(base, ids, QuantizeConfig(**PVQ), progress=False, log=None)
    for change in ({"rotate": False}, {"rotation": "layer"}, {"hessian_gain": False}, {"sequential": False},
                   {"options": {"gain_quantizer": "quantile"}}):
        model = tiny("llama")
        r = quantize_model(model, ids, QuantizeConfig(**PVQ, **change), progress=False, log=None)
        assert r.proxy_loss != r_base.proxy_loss, change
        assert all(0 < s.relative_error < 0.3 for s in r.layers), change
        plan = QuantizeConfig(**PVQ, **change).rotation_plan
        rotated = {n: m.rotation is not None for n, m in quantized(model).items()}
        # layer: every linear; fused: down_proj's input alone; none: no linear
        assert rotated == {n: plan == "layer" or (plan == "fused" and n.endswith("down_proj")) for n in rotated}, change


@pytest.mark.parametrize("method", ["gptq", "rtn"])
def test_scalar_methods_quantize(method):
    model = tiny("qwen2")  # q/k/v carry a bias
    report = quantize_model(model, calib(), QuantizeConfig(method=method, bits=4), progress=False, log=None)
    q = quantized(model)
    assert len(q) == 14
    assert q["model.layers.0.self_attn.q_proj"].bias is not None
    # D = 1 and groups of 128 weights where they divide (64 -> 64, 176 -> 176: nearest divisors)
    assert {m.codec.group_size for m in q.values()} == {64, 176}
    assert 4.0 < report.bits_per_weight < 4.5
    assert all(s.relative_error < 0.05 for s in report.layers)


def test_gptq_without_feedback_is_rtn():
    models = {m: tiny("llama") for m in ("gptq", "rtn")}
    reports = {
        "gptq": quantize_model(models["gptq"], calib(), QuantizeConfig(method="gptq", bits=3, error_feedback=False),
                               progress=False, log=None),
        "rtn": quantize_model(models["rtn"], calib(), QuantizeConfig(method="rtn", bits=3), progress=False, log=None),
    }
    qa, qb = quantized(models["gptq"]), quantized(models["rtn"])
    for name in qa:
        for key, t in qa[name].stored_tensors().items():
            assert torch.equal(t, qb[name].stored_tensors()[key]), (name, key)
    gptq = quantize_model(tiny("llama"), calib(), QuantizeConfig(method="gptq", bits=3), progress=False, log=None)
    assert gptq.proxy_loss < reports["rtn"].proxy_loss


def test_e8_quantizes():
    model = tiny("mistral")
    report = quantize_model(model, calib(), QuantizeConfig(method="e8", bits=2, rotation="layer"), progress=False,
                            log=None)
    assert len(quantized(model)) == 14
    assert 1.8 < report.bits_per_weight < 2.6
    assert all(m.rotation is not None for m in quantized(model).values())


def test_bfloat16_model():
    model = tiny("llama").to(torch.bfloat16)
    report = quantize_model(model, calib(), QuantizeConfig(**PVQ), progress=False, log=None)
    assert all(s.relative_error < 0.2 for s in report.layers)
    with torch.no_grad():
        out = model(input_ids=calib(1, 8)).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert quantized(model)["model.layers.1.mlp.down_proj"].runtime_tensors()["weight"].dtype == torch.bfloat16
