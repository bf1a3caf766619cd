"""Activation quantization wired through layers, configs, backends and checkpoints (tiny models)."""

import pytest
import torch
from tiny_models import X, calib, quantized, tiny
from transformers import AutoModelForCausalLM

import pvq  # noqa: F401  (registers the transformers quantizer)
import pvq.kernels  # noqa: F401  (registers the integer backends)
from pvq.models.format import FORMAT_VERSION
from pvq.models.activations import input_points
from pvq.models import (
    ActivationQuant,
    ActQuantLinear,
    QuantizeConfig,
    QuantizeError,
    bits_per_activation,
    load_quantized,
    quantize_model,
    read_quantization_config,
    save_quantized,
    set_activation_quant,
    set_backend,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def pvq_a4():
    """A tiny Llama with PVQ 4-bit weights and PVQ 4-bit activations, and its unquantized logits."""
    m = tiny()
    ref = m(X).logits.detach()
    cfg = QuantizeConfig(method="pvq", bits=4, n_samples=8, seq_len=32, act_bits=4)
    quantize_model(m, calib(), cfg, progress=False, log=None)
    return m, cfg, ref


def test_config_validation():
    with pytest.raises(QuantizeError, match="unknown activation method"):
        QuantizeConfig(act_bits=4, act_method="nope")
    with pytest.raises(QuantizeError, match=r"activation bits must be in \[1, 16\)"):
        QuantizeConfig(act_bits=16)
    with pytest.raises(QuantizeError, match="give act_bits too"):
        QuantizeConfig(act_dim=8)
    with pytest.raises(QuantizeError, match="--rotate"):
        QuantizeConfig(method="rtn", bits=4, act_bits=4, act_method="rtn", act_rotate=True)
    with pytest.raises(QuantizeError, match="whole number"):
        ActivationQuant("rtn", 4.5)
    assert QuantizeConfig(method="rtn", bits=4, act_bits=8, act_method="rtn").activation_quant().rotate is False
    assert QuantizeConfig(act_bits=4).activation_quant().rotate is True
    aq = ActivationQuant("pvq", 4, 24, True, 1.0, 4)
    assert ActivationQuant.from_dict(aq.to_dict()) == aq


def test_plan_refuses_a_d_that_does_not_divide_and_names_one_that_does():
    m = tiny()
    with pytest.raises(QuantizeError, match=r"D=32 does not divide the input sizes \[176\].*a D that works: 16"):
        QuantizeConfig(bits=4, act_bits=4, act_dim=32).plan(m)
    notes = QuantizeConfig(bits=4, dim=16, act_bits=4, act_dim=8).plan(m).notes
    assert any("activations of in=64: pvq(D=8" in n for n in notes)
    assert not any("do not nest" in n for n in notes)
    m48 = tiny(hidden_size=48, intermediate_size=144)
    notes = QuantizeConfig(bits=4, dim=16, act_bits=4, act_dim=24).plan(m48).notes
    assert any("vectors of 24 and weight vectors of 16 do not nest" in n for n in notes)
    with pytest.raises(QuantizeError, match=r"D=32 does not divide a layer's 176 inputs; a D that works: 22"):
        ActivationQuant(dim=32).resolve(176)


def test_layers_quantize_activations_through_the_integer_product(pvq_a4):
    m, cfg, ref = pvq_a4
    layers = quantized(m)
    assert all(q.act_quant is not None and q.act_quant.dim == q.codec.dim for q in layers.values())
    out = m(X).logits
    assert {q.backend for q in layers.values()} == {"act-int"}  # integer product, chosen on CPU
    set_backend(m, "act-dense")
    dense = m(X).logits
    set_backend(m, "act-int-triton")  # on the GPU where there is one, else the Triton interpreter
    tri = m.to(DEVICE)(X.to(DEVICE)).logits.cpu()
    m.to("cpu")
    set_backend(m, None)
    scale = float(out.abs().max())
    assert torch.allclose(out, dense, atol=1e-5 * scale) and torch.allclose(out, tri, atol=1e-5 * scale)
    # activation quantization changes the output (the weight-only model differs), a little
    set_activation_quant(m, None)
    weights_only = m(X).logits
    set_activation_quant(m, cfg.activation_quant())
    diff = float((out - weights_only).abs().max())
    assert 1e-4 * scale < diff < 0.5 * scale
    assert float((out - ref).abs().max()) < 0.5 * scale
    with pytest.raises(QuantizeError, match="does not quantize activations"):
        set_backend(m, "dense")
        m(X)
    set_backend(m, None)


def test_automatic_choice_is_the_integer_product_on_both_devices(pvq_a4):
    """CPU: act-int (torch._int_mm); CUDA: act-int-triton (chosen from the device type alone, so this
    runs without a GPU)."""
    from pvq.models.backends import select_backend

    layer = next(iter(quantized(pvq_a4[0]).values()))
    assert select_backend(layer, torch.device("cpu")).name == "act-int"
    assert select_backend(layer, torch.device("cuda")).name == "act-int-triton"


@pytest.mark.parametrize("name", ["self_attn.q_proj", "mlp.down_proj"])  # in = 64 (FWHT), 176 (dense factor)
def test_a_token_does_not_depend_on_the_other_tokens(pvq_a4, name):
    m, _, _ = pvq_a4
    q = m.model.layers[0].get_submodule(name)
    x = torch.randn(37, q.in_features, generator=torch.Generator().manual_seed(3))
    together = input_points(q, x)
    again = input_points(q, x.clone())
    assert torch.equal(together.points, again.points) and torch.equal(together.gains, again.gains)
    others = torch.cat([x[4:5], torch.randn(20, q.in_features) * 100])
    for i, (batch, row) in enumerate([(x[i : i + 1], 0) for i in range(37)] + [(others, 0)]):
        alone = input_points(q, batch)
        k = i if i < 37 else 4
        assert torch.equal(alone.points[row], together.points[k]) and torch.equal(alone.gains[row], together.gains[k])
    y = q(x)
    assert torch.allclose(q(x[5:6])[0], y[5], rtol=1e-5, atol=1e-6)


def test_checkpoint_round_trip_through_from_pretrained(pvq_a4, tmp_path):
    m, cfg, _ = pvq_a4
    want = m(X).logits
    path = save_quantized(m, tmp_path / "a4", cfg)
    qdict = read_quantization_config(path)
    assert qdict["format_version"] == FORMAT_VERSION
    entry = qdict["modules"]["model.layers.0.mlp.down_proj"]["activation"]
    assert entry["method"] == "pvq" and entry["dim"] == 16 and entry["rotate"] is True
    assert 3.8 < qdict["bits_per_activation"] <= 4.0
    for model in (AutoModelForCausalLM.from_pretrained(str(path)), load_quantized(path, via="direct")):
        layers = quantized(model)
        assert all(q.act_quant == quantized(m)[n].act_quant for n, q in layers.items())
        assert torch.equal(model(X).logits, want)
        assert bits_per_activation(model) == pytest.approx(qdict["bits_per_activation"])


def test_quarot_baseline_rtn_weights_and_rtn_activations_run_the_float_reference():
    m = tiny()
    cfg = QuantizeConfig(method="rtn", bits=4, rotate=True, n_samples=4, seq_len=32,
                         act_bits=4, act_method="rtn", act_clip=0.9)
    quantize_model(m, calib(4), cfg, progress=False, log=None)
    m(X)
    layers = quantized(m)
    assert {q.backend for q in layers.values()} == {"act-dense"}  # uniform weights: no integer points
    assert all(q.act_quantizer.name == "rtn" and q.act_quantizer.clip == 0.9 for q in layers.values())
    # per layer 4 bits + one fp16 scale per token; per block six layers read 64 inputs, down_proj 176
    assert bits_per_activation(m) == pytest.approx(4 + 16 * 7 / (6 * 64 + 176))


@pytest.mark.parametrize("plan", ["layer", "fused"])
def test_pvq_weights_with_rtn_activations_use_the_integer_product(plan):
    m = tiny()
    cfg = QuantizeConfig(method="pvq", bits=3, n_samples=4, seq_len=32, act_bits=8, act_method="rtn", rotation=plan)
    quantize_model(m, calib(4), cfg, progress=False, log=None)
    out = m(X).logits
    assert {q.backend for q in quantized(m).values()} == {"act-int"}
    # each layer: the integer product equals the float reference on the same input to float rounding
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(2))
    for name, q in quantized(m).items():
        xi = x if q.in_features == 64 else torch.randn(5, q.in_features, generator=torch.Generator().manual_seed(3))
        q.set_backend(None)
        y = q(xi)
        q.set_backend("act-dense")
        assert torch.allclose(y, q(xi), atol=1e-5 * float(y.abs().max())), name
    set_backend(m, "act-dense")
    if plan == "layer":  # whole model: the same codes everywhere (under fused the unrotated float32 inputs of
        # q/k/v/gate/up let a last-bit difference flip an 8-bit code downstream: 0.2% of the logits move)
        assert torch.allclose(out, m(X).logits, atol=1e-5 * float(out.abs().max()))


def test_activation_only_quantization_of_plain_linears():
    m = tiny()
    ref = m(X).logits
    n = set_activation_quant(m, ActivationQuant("pvq", 6), plain=True)
    assert n == 14 and isinstance(m.model.layers[1].mlp.down_proj, ActQuantLinear)
    out = m(X).logits
    scale = float(ref.abs().max())
    assert 1e-5 * scale < float((out - ref).abs().max()) < 0.1 * scale
    assert 5.5 < bits_per_activation(m) <= 6.0
    m2 = tiny()
    set_activation_quant(m2, ActivationQuant("rtn", 8, rotate=False), plain=True)
    assert float((m2(X).logits - ref).abs().max()) < 0.05 * scale
    m3 = tiny()
    with pytest.raises(QuantizeError, match="not rotated"):
        quantize_model(m3, calib(4), QuantizeConfig(method="rtn", bits=4, n_samples=4, seq_len=32),
                       progress=False, log=None)
        set_activation_quant(m3, ActivationQuant("rtn", 4))
