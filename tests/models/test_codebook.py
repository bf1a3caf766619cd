"""Method ``codebook`` (Hessian-weighted K-means per layer) through the driver and the checkpoint."""

import pytest
import torch

import pvq  # noqa: F401  (registers the transformers quantizer)
from pvq.errors import QuantizeError
from pvq.models import QuantizeConfig, quantize_model, save_quantized
from pvq.solvers import SolverConfig, quantize_linear
from tiny_models import X, calib, quantized, tiny
from transformers import AutoModelForCausalLM


def run(options=None, **cfg):
    model = tiny()
    config = QuantizeConfig(method="codebook", options=options or {}, **{"bits": 2, "dim": 2, **cfg})
    report = quantize_model(model, calib(), config, progress=False, log=None)
    return model, report


@pytest.fixture(scope="module")
def hessian_model():
    return run()


def test_codebook_layers_store_their_codebook_and_count_it(hessian_model):
    model, report = hessian_model
    qs = quantized(model)
    assert len(qs) == 14
    for name, q in qs.items():
        t = q.stored_tensors()
        assert set(t) == {"index", "codebook", "scale"}, name
        assert set(q.codes()) == {"index"}  # per-vector codes only; the codebook is the codec's data
        assert t["codebook"].shape == (16, 2) and t["codebook"].dtype == torch.float16  # 2^(2*2) centroids, D=2
        bits = sum(v.numel() * v.element_size() * 8 for v in t.values())
        assert q.stored_bits() == bits
        # index bits + scale bits + the codebook: the codebook is counted
        assert bits >= q.num_weights * 2 + 16 * 16 * 2
        # decoded weight: every vector is a codebook entry times its group scale
        codebook = q.fitted_codec().codebook
        torch.testing.assert_close(codebook, t["codebook"].float(), rtol=0, atol=0)
        w = q.rotated_weight().reshape(-1, 2)
        s = q.per_vector_scales().reshape(-1, 1)
        assert torch.equal(w, codebook[q.codes()["index"]] * s)
    assert report.bits_per_weight == pytest.approx(sum(q.stored_bits() for q in qs.values()) / report.num_weights)
    assert 2.0 < report.bits_per_weight < 2.6
    # layers have their own codebooks
    cbs = [q.stored_tensors()["codebook"] for q in qs.values()]
    assert not torch.equal(cbs[0], cbs[1])


def test_codebook_checkpoint_reloads_bit_exactly(hessian_model, tmp_path):
    model, report = hessian_model
    save_quantized(model, tmp_path / "cb", report)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "cb")
    qa, qb = quantized(model), quantized(loaded)
    assert qa.keys() == qb.keys()
    for name, m in qa.items():
        assert qb[name].codec_config == m.codec_config
        for key, t in m.stored_tensors().items():
            u = qb[name].stored_tensors()[key]
            assert u.dtype == t.dtype and torch.equal(u, t), (name, key)
    with torch.no_grad():
        assert torch.equal(model(input_ids=X).logits, loaded(input_ids=X).logits)


def test_quantized_model_is_close_to_the_original(hessian_model):
    model, _ = hessian_model
    with torch.no_grad():
        ref = tiny()(input_ids=X).logits
        out = model(input_ids=X).logits
    rel = float((out - ref).pow(2).mean() / ref.pow(2).mean())
    assert rel < 0.1


def test_weightings_and_feedback_switch_change_the_result(hessian_model):
    model_h, _ = hessian_model
    model_n, rep_n = run({"weighting": "none"})
    model_o, _ = run({"weighting": "obs"}, error_feedback=False)
    name = "model.layers.0.mlp.down_proj"
    cb = {k: quantized(m)[name].stored_tensors()["codebook"] for k, m in
          (("hessian", model_h), ("none", model_n), ("obs", model_o))}
    assert not torch.equal(cb["hessian"], cb["none"]) and not torch.equal(cb["obs"], cb["none"])
    assert rep_n.config.options == {"weighting": "none"}


def test_solver_fits_the_codebook_weighted_by_the_hessian():
    """On an anisotropic Hessian the diag-H codebook has the lower diag-H-weighted error."""
    from pvq.codecs.kmeans import weighted_assign

    g = torch.Generator().manual_seed(3)
    w = torch.randn(32, 64, generator=g)
    x = torch.randn(256, 64, generator=g) * torch.logspace(-1, 1, 64)[torch.randperm(64, generator=g)]
    h = (x.T @ x / 256).double()
    config = QuantizeConfig(method="codebook", bits=2, dim=4, group_size=16)
    solver = SolverConfig(error_feedback=False, hessian_gain=False)
    cb_h = quantize_linear(w, h, config.make_codec(4, 16), None, solver).codec.codebook
    plain = config.replace(options={"weighting": "none"}).make_codec(4, 16)
    cb_n = quantize_linear(w, h, plain, None, solver).codec.codebook
    assert cb_h.shape == (256, 4)
    scale = plain.group_scales(w.reshape(-1, 16, 4)).repeat_interleave(16).reshape(-1, 1)
    u = w.reshape(-1, 4) / scale
    imp = torch.diagonal(h).float().reshape(1, 16, 4).expand(32, -1, -1).reshape(-1, 4)
    err = {k: float(weighted_assign(u, imp, cb)[1].sum()) for k, cb in (("h", cb_h), ("n", cb_n))}
    assert err["h"] < 0.9 * err["n"]


def test_codebook_config_validation():
    with pytest.raises(QuantizeError, match="weighting must be one of"):
        QuantizeConfig(method="codebook", options={"weighting": "diag"})
    with pytest.raises(QuantizeError, match="does not apply to method 'gptq'"):
        QuantizeConfig(method="gptq", options={"weighting": "obs"})
    with pytest.raises(QuantizeError, match="lora_steps"):
        QuantizeConfig(method="codebook", lora_steps=-1)
    with pytest.raises(QuantizeError, match="index bits"):
        QuantizeConfig(method="codebook", bits=3, dim=8, group_size=4)  # 2^24 centroids
    # the default D keeps codebooks small: 2^(bits D) <= 2^8 centroids
    assert [QuantizeConfig(method="codebook", bits=b).default_dim() for b in (2, 3, 4)] == [4, 2, 2]
    c = QuantizeConfig(method="codebook", bits=3, dim=2, options={"weighting": "obs"})
    assert QuantizeConfig.from_dict(c.to_dict()).to_dict() == c.to_dict()  # the JSON round trip (rotation resolved)
    # a version-1 checkpoint's flat config reads into the same options
    legacy = {k: v for k, v in c.to_dict().items() if k != "options"}
    legacy.update(codebook_weighting="obs", gain_quantizer="lloydmax", gain_target="projection", search="greedy",
                  gain_bits=None, symmetric=False)
    assert QuantizeConfig.from_dict(legacy).to_dict() == c.to_dict()


# ---------------------------------------------------------------- LoRA recovery

from pvq.models.lora import calibration_loss, chunk_blocks, lora_tune  # noqa: E402


def test_lora_steps_lower_the_calibration_loss_and_merge():
    model = tiny()
    ids = calib()
    names = ["model.layers.1.mlp.down_proj", "model.layers.1.self_attn.o_proj"]
    untouched = model.model.layers[0].mlp.down_proj.weight.clone()
    st = lora_tune(model, ids, names, steps=12, lr=3e-3, seed=0)
    assert st.loss_after < st.loss_before - 0.01
    assert st.loss_after == pytest.approx(calibration_loss(model, ids), rel=1e-5)
    # adapters merged away: plain nn.Linear again, other layers unchanged
    assert type(model.model.layers[1].mlp.down_proj) is torch.nn.Linear
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight, untouched)
    # seeded: the same run gives the same weights
    again = tiny()
    lora_tune(again, ids, names, steps=12, lr=3e-3, seed=0)
    assert torch.equal(again.model.layers[1].mlp.down_proj.weight, model.model.layers[1].mlp.down_proj.weight)


def test_chunk_blocks():
    assert chunk_blocks(8, 4) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert chunk_blocks(2, 4) == [[0], [1]]
    assert chunk_blocks(5, 2) == [[0, 1], [2, 3, 4]]


def test_codebook_with_lora_schedule_saves_and_reloads(tmp_path):
    model = tiny()
    config = QuantizeConfig(method="codebook", bits=2, dim=2, lora_steps=4)
    notes = []
    report = quantize_model(model, calib(), config, progress=False, log=notes.append)
    assert len(quantized(model)) == 14 and len(report.layers) == 14
    assert any(n.startswith("LoRA after blocks 0-0: 4 steps on 7 linears") for n in report.notes)
    save_quantized(model, tmp_path / "lora", report)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "lora")
    with torch.no_grad():
        assert torch.equal(model(input_ids=X).logits, loaded(input_ids=X).logits)


def test_quantize_model_blocks_quantizes_only_those_blocks():
    model = tiny()
    config = QuantizeConfig(method="codebook", bits=2, dim=2)
    report = quantize_model(model, calib(), config, progress=False, log=None, blocks=[1])
    assert {s.block for s in report.layers} == {1} and len(report.layers) == 7
    assert all(n.startswith("model.layers.1.") for n in quantized(model))
    with pytest.raises(QuantizeError, match="block indices"):
        quantize_model(tiny(), calib(), config, progress=False, log=None, blocks=[2])
