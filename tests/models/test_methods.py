"""QuantizeConfig validation, the method registry, and plans on a tiny model (no quantization work)."""

import pytest
import torch

from pvq.models import METHODS, QuantizeConfig, QuantizeError, get_method, quantize_model
from pvq.models import capture as capture_mod
from pvq.models.methods import MethodSpec, register_method

from tiny_models import tiny


def tiny_llama(seed: int = 0):
    return tiny("llama", seed)


def test_registry_holds_the_four_methods():
    assert {"pvq", "gptq", "rtn", "e8"} <= set(METHODS)
    pvq = get_method("pvq")
    assert (pvq.codec, pvq.rotate, pvq.error_feedback, pvq.hessian_gain) == ("pvq", True, True, True)
    gptq = get_method("gptq")
    assert (gptq.codec, gptq.default_dim, gptq.default_group_size, gptq.rotate, gptq.error_feedback) == (
        "uniform", 1, 128, False, True)
    rtn = get_method("rtn")
    assert (rtn.codec, rtn.rotate, rtn.error_feedback) == ("uniform", False, False)
    e8 = get_method("e8")
    assert (e8.codec, e8.default_dim, e8.rotate, e8.error_feedback) == ("e8", 8, True, True)


def test_adding_a_method_is_one_registry_entry():
    spec = MethodSpec("pvq-test-nofeedback", "pvq", "test", rotate=False, error_feedback=False,
                      hessian_gain=False, default_dim=8, default_group_size=2)
    register_method(spec)
    try:
        cfg = QuantizeConfig(method="pvq-test-nofeedback", bits=3, options={"search": "refine"})
        assert not cfg.use_rotation and not cfg.use_error_feedback
        assert cfg.plan(tiny_llama()).layers[0].codec.search == "refine"
        with pytest.raises(RuntimeError, match="twice"):
            register_method(spec)
    finally:
        del METHODS["pvq-test-nofeedback"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "awq"}, "unknown method 'awq'; choose one of: .*gptq"),
        ({"bits": 0}, "bits"),
        ({"bits": float("nan")}, "bits"),
        ({"bits": "3"}, "bits"),
        ({"dim": 0}, "dim"),
        ({"group_size": 2.5}, "group_size"),
        ({"damp": -1}, "damp"),
        ({"n_samples": 0}, "n_samples"),
        ({"seq_len": 1}, "seq_len"),
        ({"rotate": "yes"}, "rotate"),
        ({"bits": 16}, "not compression"),
        ({"options": {"gain_quantizer": "kmeans"}}, "gain_quantizer must be one of"),
        ({"options": {"gain_bits": 2.5}}, "gain_bits takes a int"),
        ({"method": "gptq", "options": {"gain_quantizer": "quantile"}}, "does not apply to method 'gptq'.*pvq"),
        ({"method": "pvq", "options": {"symmetric": True}}, "does not apply to method 'pvq'"),
        ({"options": {"nonsense": 1}}, "nonsense=1 does not apply to method 'pvq'.*no method takes it"),
    ],
)
def test_bad_config_fails_at_construction(kwargs, match):
    with pytest.raises(QuantizeError, match=match):
        QuantizeConfig(**kwargs)


def test_rate_no_k_reaches_fails_at_construction_and_says_what_to_change():
    with pytest.raises(QuantizeError, match="no pulse count K reaches.*raise the rate"):
        QuantizeConfig(method="pvq", bits=0.4, dim=8, group_size=2)
    cfg = QuantizeConfig(method="pvq", bits=0.4)  # D and G adapt to the model: checked by plan()
    with pytest.raises(QuantizeError, match="no pulse count K reaches"):
        cfg.plan(tiny_llama())


def test_hessian_gain_needs_a_codec_that_has_it():
    with pytest.raises(QuantizeError, match="hessian_gain=True needs a codec with Hessian-optimal gains"):
        QuantizeConfig(method="gptq", bits=4, dim=1, group_size=64, hessian_gain=True)


def test_to_dict_round_trip_and_unknown_keys():
    cfg = QuantizeConfig(method="pvq", bits=2.5, dim=8, group_size=4, hessian_gain=False, options={"search": "refine"}, seed=7)
    d = cfg.to_dict()
    assert d["rotation"] == "layer"  # stored resolved: a later default never changes what a saved run did
    back = QuantizeConfig.from_dict(d)
    assert back.to_dict() == d and back == cfg.replace(rotation="layer")
    with pytest.raises(QuantizeError, match="unknown quantize option"):
        QuantizeConfig.from_dict({**d, "bogus": 1})


def test_group_size_that_does_not_divide_a_layer_names_the_ones_that_do():
    model = tiny_llama()
    cfg = QuantizeConfig(method="pvq", bits=3, dim=8, group_size=3)
    with pytest.raises(QuantizeError, match=r"G=3 .*does not divide model\.layers\.0\.self_attn\.q_proj.*\[1, 2, 4, 8\]"):
        cfg.plan(model)
    cfg = QuantizeConfig(method="pvq", bits=3, dim=8, group_size=4)  # 64/8 = 8 ok, 176/8 = 22 not
    with pytest.raises(QuantizeError, match=r"down_proj .*in_features=176.*\[1, 2, 11, 22\]"):
        cfg.plan(model)


def test_dim_that_does_not_divide_names_the_ones_that_do():
    with pytest.raises(QuantizeError, match=r"D=24 does not divide .*\[64, 176\].*\[1, 2, 4, 8, 16\]"):
        QuantizeConfig(method="pvq", bits=3, dim=24).plan(tiny_llama())


def test_default_dim_and_group_adapt_per_layer():
    model = tiny_llama()
    plan = QuantizeConfig(method="pvq", bits=3).plan(model)  # default D=32 does not divide 176: D=16 there only
    assert {p.in_features: p.dim for p in plan.layers} == {64: 32, 176: 16}
    assert {p.in_features: p.codec.dim for p in plan.layers} == {64: 32, 176: 16}
    g = {p.in_features: p.group_size for p in plan.layers}
    assert g == {64: 2, 176: 11}  # divisors nearest to 16 in log scale
    assert any("in=64: D=32, in=176: D=16" in n for n in plan.notes)
    assert any("group size per layer" in n for n in plan.notes)
    assert len(plan.layers) == 14 and plan.layers[0].name == "model.layers.0.self_attn.q_proj"
    layer_plan = QuantizeConfig(method="pvq", bits=3, rotation="layer").plan(model)
    rot = layer_plan.layers[0].rotation
    assert rot is not None and rot != layer_plan.layers[1].rotation  # distinct seeds per layer
    assert QuantizeConfig(method="pvq", bits=3, rotate=False).plan(model).layers[0].rotation is None
    fused = QuantizeConfig(method="pvq", bits=3, rotation="fused").plan(model)
    assert {p.name.rpartition(".")[2] for p in fused.layers if p.rotation is not None} == {"down_proj"}
    assert all(p.rotation.u is None for p in fused.layers if p.rotation is not None)


def test_bad_input_fails_before_any_work(monkeypatch):
    """Config/plan/calibration errors are raised before inputs are captured or anything changes."""
    model = tiny_llama()

    def boom(*a, **k):
        raise AssertionError("quantization work started")

    monkeypatch.setattr(capture_mod, "capture_block_inputs", boom)
    monkeypatch.setattr("pvq.models.driver.capture_block_inputs", boom)
    ids = torch.randint(0, 128, (2, 16))
    with pytest.raises(QuantizeError, match="does not divide"):
        quantize_model(model, ids, QuantizeConfig(method="pvq", bits=3, dim=8, group_size=3), progress=False, log=None)
    good = QuantizeConfig(method="pvq", bits=3, dim=8, group_size=2)
    with pytest.raises(QuantizeError, match="vocabulary"):
        quantize_model(model, ids + 1000, good, progress=False, log=None)
    with pytest.raises(QuantizeError, match="integer token ids"):
        quantize_model(model, ids.float(), good, progress=False, log=None)
    with pytest.raises(QuantizeError, match="shape"):
        quantize_model(model, ids[0], good, progress=False, log=None)
    with pytest.raises(QuantizeError, match="QuantizeConfig"):
        quantize_model(model, ids, {"method": "pvq"}, progress=False, log=None)
    with pytest.raises(QuantizeError, match="cannot find its decoder blocks"):
        quantize_model(torch.nn.Linear(4, 4), ids, good, progress=False, log=None)
    assert all(type(m).__name__ != "QuantizedLinear" for m in model.modules())


def test_a_codec_that_cannot_be_stored_fails_at_construction(monkeypatch):
    from pvq.codecs.pyramid import PyramidCodec

    def no_config(self):
        raise NotImplementedError

    monkeypatch.setattr(PyramidCodec, "config", no_config)
    with pytest.raises(QuantizeError, match="cannot be stored in a checkpoint"):
        QuantizeConfig(method="pvq", bits=3, dim=8, group_size=2)
