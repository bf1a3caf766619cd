"""QuantizedLinear: storage, exact decoding, rotation undo, forward cache; the solver view of codecs."""

import pytest
import torch
import torch.nn.functional as F

from pvq.codecs import CODECS, make_codec, quantize_grouped
from pvq.models import QuantizeConfig, QuantizedLinear
from pvq.models.driver import _quantize_linear, _SolverCodec
from pvq.models.methods import LayerPlan
from pvq.solvers import proxy_loss, quantize_layer
from pvq.transforms import RandomizedHadamard


def layer(out_f=64, in_f=176, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(in_f, out_f, bias=bias)
    x = torch.randn(512, in_f) * torch.linspace(0.2, 2.0, in_f)  # uneven input scales
    h = (x.T.double() @ x.double()) / x.shape[0]
    return lin, h


def test_from_stored_decodes_exactly_and_counts_stored_bits():
    lin, h = layer()
    codec = make_codec("pvq", 3.0, 16, group_size=11)
    res = quantize_layer(lin.weight.detach(), h, codec)
    stored = res.stored(codec)
    q = QuantizedLinear.from_stored(lin, codec, stored.tensors)
    assert torch.equal(q.rotated_weight(), res.weight)  # unpack(pack(codes)) decodes to the solver's Q
    assert torch.equal(q.dequantize(), res.weight)  # no rotation
    q.seed_cache(res.weight, torch.float32)  # what the driver does: no second decode
    assert torch.equal(q.weight_cache, q.dequantize())
    assert q.stored_bits() == stored.storage_bits()
    assert q.bits_per_weight() == pytest.approx(stored.bits_per_weight())
    assert q.other_bits() == 64 * 32
    assert q.scales.dtype == torch.float16 and q.packed_codes.dtype == torch.uint8
    assert set(q.state_dict()) == {"packed_codes", "scales", "bias"}  # the cache is not persistent
    assert torch.equal(q.bias, lin.bias)


def test_rotation_is_undone_with_the_dense_reference():
    lin, h = layer(bias=False)
    codec = make_codec("pvq", 3.0, 16, group_size=11)
    rot = {"out_seed": 11, "in_seed": 12}
    q, loss, rel, _ = _quantize_linear(lin, h, LayerPlan(0, "x", 64, 176, 16, 11, codec, rot), QuantizeConfig(bits=3), "cpu")
    u = RandomizedHadamard(64, 11).matrix()
    v = RandomizedHadamard(176, 12).matrix()
    expect = u.T @ q.rotated_weight().double() @ v  # U^T Q' V
    torch.testing.assert_close(q.dequantize().double(), expect, rtol=0, atol=1e-6)
    # the loss reported in rotated coordinates is the loss in the layer's own coordinates (H' = V H V^T)
    w = lin.weight.detach().double()
    assert proxy_loss(w, q.dequantize().double(), h) == pytest.approx(loss, rel=1e-4)
    assert rel == pytest.approx(loss / proxy_loss(w, torch.zeros_like(w), h), rel=1e-9)


def test_forward_uses_a_cached_dequantized_weight():
    lin, h = layer()
    codec = make_codec("pvq", 3.0, 16, group_size=11)
    q, *_ = _quantize_linear(lin, h, LayerPlan(0, "x", 64, 176, 16, 11, codec, {"out_seed": 1, "in_seed": 2}),
                             QuantizeConfig(bits=3), "cpu")
    assert torch.equal(q.weight_cache, q.dequantize())  # seeded by the driver from the solver's Q'
    x = torch.randn(3, 5, 176)
    y = q(x)
    assert torch.equal(y, F.linear(x, q.dequantize(), q.bias))
    cache = q.weight_cache
    q(x)
    assert q.weight_cache is cache  # built once
    y64 = q(x.double())
    assert y64.dtype == torch.float64 and q.weight_cache.dtype == torch.float64
    q.clear_cache()
    assert q.weight_cache is None


def test_layer_config_rebuilds_the_module():
    lin, h = layer()
    codec = make_codec("pvq", 2.0, 16, group_size=11, search="refine")
    q, *_ = _quantize_linear(lin, h, LayerPlan(0, "x", 64, 176, 16, 11, codec, {"out_seed": 3, "in_seed": 4}),
                             QuantizeConfig(bits=2, search="refine"), "cpu")
    cfg = q.layer_config()
    assert cfg["codec"]["name"] == "pvq" and cfg["codec"]["search"] == "refine"
    assert cfg["rotation"] == {"out_seed": 3, "in_seed": 4}
    assert cfg["tensors"]["codes"]["dtype"] == "uint8" and cfg["tensors"]["scale"]["dtype"] == "float16"
    empty = QuantizedLinear.from_layer_config(cfg, device="meta")
    assert empty.packed_codes.device.type == "meta"
    fresh = QuantizedLinear.from_layer_config(cfg)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh.dequantize(), q.dequantize())
    for k, v in q.codes().items():
        assert torch.equal(fresh.codes()[k], v)


def test_solver_view_hides_hessian_gains_when_switched_off():
    codec = make_codec("pvq", 3.0, 8, group_size=2)
    assert callable(getattr(_SolverCodec(codec, True), "encode_hessian", None))
    assert getattr(_SolverCodec(codec, False), "encode_hessian", None) is None


@pytest.mark.skipif("uniform" not in CODECS, reason="codec 'uniform' not registered yet")
@pytest.mark.parametrize("symmetric", [False, True])
def test_solver_view_of_uniform_without_feedback_is_grouped_rtn(symmetric):
    """Asymmetric uniform needs per-group zero points in column blocks: the solver view supplies them."""
    lin, h = layer(out_f=24, in_f=176, bias=False)
    codec = make_codec("uniform", 3.0, 1, group_weights=88, symmetric=symmetric)
    w = lin.weight.detach()
    res = quantize_layer(w, h, _SolverCodec(codec, False), error_feedback=False)
    ref = quantize_grouped(codec, w.reshape(-1, 1))
    assert torch.equal(res.weight.reshape(-1, 1), ref.xhat)
    stored = res.stored(codec).tensors
    for key, t in ref.stored.tensors.items():
        assert torch.equal(stored[key], t), key
    fb = quantize_layer(w, h, _SolverCodec(codec, False), error_feedback=True)
    assert fb.proxy_loss < res.proxy_loss
    assert torch.equal(codec.decode(codec.unpack({k: v for k, v in fb.stored(codec).tensors.items() if k != "scale"},
                                                 w.numel()), fb.per_vector_scales()).reshape(w.shape), fb.weight)
