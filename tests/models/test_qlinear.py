"""QuantizedLinear: storage, exact decoding, rotation undo, runtime backends; the solver entry point."""

import pytest
import torch
import torch.nn.functional as F

from pvq.codecs import make_codec, quantize_grouped
from pvq.errors import QuantizeError
from pvq.models import BACKENDS, QuantizedLinear, set_backend
from pvq.solvers import SolverConfig, proxy_loss, quantize_layer, quantize_linear
from pvq.transforms import LayerRotation, RandomizedHadamard


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
    stored = res.stored()
    q = QuantizedLinear.from_stored(lin, codec, stored.tensors)
    assert torch.equal(q.rotated_weight(), res.weight)  # unpack(pack(codes)) decodes to the solver's Q
    assert torch.equal(q.dequantize(), res.weight)  # no rotation
    q.seed_cache(res.weight, torch.float32)  # what the driver does: no second decode
    assert q.backend == "dense" and torch.equal(q.runtime_tensors()["weight"], q.dequantize())
    assert q.stored_bits() == stored.storage_bits()
    assert q.bits_per_weight() == pytest.approx(stored.bits_per_weight())
    assert q.other_bits() == 64 * 32
    assert q.scales.dtype == torch.float16 and q.packed_codes.dtype == torch.uint8
    assert set(q.state_dict()) == {"packed_codes", "scales", "bias"}  # runtime tensors are not persistent
    assert torch.equal(q.bias, lin.bias)


def quantize(lin, h, codec, seeds=None, **solver):
    """The driver's steps for one layer: solver entry point, module, seeded dense cache."""
    rot = None if seeds is None else LayerRotation(lin.out_features, lin.in_features, *seeds)
    res = quantize_linear(lin.weight.detach(), h, codec, rot, SolverConfig(**solver))
    q = QuantizedLinear.from_stored(lin, res.codec, res.stored, rot)
    q.seed_cache(res.rotated_weight, lin.weight.dtype)
    return q, res


def test_rotation_is_undone_with_the_dense_reference():
    lin, h = layer(bias=False)
    codec = make_codec("pvq", 3.0, 16, group_size=11)
    q, res = quantize(lin, h, codec, (11, 12))
    loss = res.proxy_loss
    u = RandomizedHadamard(64, 11).matrix()
    v = RandomizedHadamard(176, 12).matrix()
    expect = u.T @ q.rotated_weight().double() @ v  # U^T Q' V
    torch.testing.assert_close(q.dequantize().double(), expect, rtol=0, atol=1e-6)
    # the loss reported in rotated coordinates is the loss in the layer's own coordinates (H' = V H V^T)
    w = lin.weight.detach().double()
    assert proxy_loss(w, q.dequantize().double(), h) == pytest.approx(loss, rel=1e-4)
    assert res.relative_error == pytest.approx(loss / proxy_loss(w, torch.zeros_like(w), h), rel=1e-9)


def test_dense_backend_caches_the_dequantized_weight():
    lin, h = layer()
    codec = make_codec("pvq", 3.0, 16, group_size=11)
    q, _ = quantize(lin, h, codec, (1, 2))
    assert torch.equal(q.runtime_tensors()["weight"], q.dequantize())  # seeded from the solver's Q'
    x = torch.randn(3, 5, 176)
    y = q(x)
    assert q.backend == "dense"
    assert torch.equal(y, F.linear(x, q.dequantize(), q.bias))
    cache = q.runtime_tensors()["weight"]
    q(x)
    assert q.runtime_tensors()["weight"] is cache  # built once
    y64 = q(x.double())
    assert y64.dtype == torch.float64 and q.runtime_tensors()["weight"].dtype == torch.float64
    q.clear_cache()
    assert q.runtime_tensors() == {} and q.backend is None


@pytest.mark.parametrize("bias", [False, True])
def test_forward_in_rotated_coordinates_matches_the_dense_backend(bias):
    """``y = U^T (Q' (V x)) + b`` (what kernels compute) equals ``W x + b`` to float rounding."""
    lin, h = layer(out_f=48, in_f=176, bias=bias, seed=3)
    q, _ = quantize(lin, h, make_codec("pvq", 3.0, 16, group_size=11), (5, 6))
    x = torch.randn(4, 176, dtype=torch.float64)
    dense = q(x)
    assert set_backend(torch.nn.Sequential(q), "dense-rotated") == 1
    rotated = q(x)
    assert q.backend == "dense-rotated" and set(q.runtime_tensors()) == {"rotated_weight"}
    # equal up to the float32 rounding of the cached dense W (Q' is exact in both)
    torch.testing.assert_close(rotated, dense, rtol=1e-5, atol=1e-6)
    q.set_backend(None)
    assert q(x) is not None and q.backend == "dense"  # automatic choice on CPU: the highest priority
    assert BACKENDS["dense"].priority > BACKENDS["dense-rotated"].priority
    with pytest.raises(QuantizeError, match="unknown backend 'triton-x'"):
        q.set_backend("triton-x")


def test_layer_config_rebuilds_the_module():
    lin, h = layer()
    codec = make_codec("pvq", 2.0, 16, group_size=11, search="refine")
    q, _ = quantize(lin, h, codec, (3, 4))
    cfg = q.layer_config()
    assert cfg["codec"]["name"] == "pvq" and cfg["codec"]["search"] == "refine"
    assert cfg["rotation"] == {"out_seed": 3, "in_seed": 4} and cfg["layout"] == "stored"
    assert cfg["tensors"]["codes"]["dtype"] == "uint8" and cfg["tensors"]["scale"]["dtype"] == "float16"
    empty = QuantizedLinear.from_layer_config(cfg, device="meta")
    assert empty.packed_codes.device.type == "meta"
    fresh = QuantizedLinear.from_layer_config(cfg)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh.dequantize(), q.dequantize())
    for k, v in q.codes().items():
        assert torch.equal(fresh.codes()[k], v)
    with pytest.raises(QuantizeError, match="unknown code layout"):
        QuantizedLinear.from_layer_config({**cfg, "layout": "triton-tiles"})


def test_hessian_gain_switch_changes_the_pvq_codes():
    lin, h = layer(out_f=32, in_f=64, bias=False)
    codec = make_codec("pvq", 3.0, 8, group_size=2)
    on = quantize_layer(lin.weight.detach(), h[:64, :64], codec, hessian_gain=True)
    off = quantize_layer(lin.weight.detach(), h[:64, :64], codec, hessian_gain=False)
    assert not torch.equal(on.merged_codes()["gain"], off.merged_codes()["gain"])
    assert on.proxy_loss < off.proxy_loss


@pytest.mark.parametrize("symmetric", [False, True])
def test_uniform_zero_points_are_group_parameters_of_the_solver(symmetric):
    """Asymmetric uniform needs per-group zero points in column blocks: the solver takes them from
    ``group_zero_points`` with the scales; without feedback that is grouped RTN exactly."""
    lin, h = layer(out_f=24, in_f=176, bias=False)
    codec = make_codec("uniform", 3.0, 1, group_weights=88, symmetric=symmetric)
    w = lin.weight.detach()
    res = quantize_layer(w, h, codec, error_feedback=False)
    assert (res.zeros is None) == symmetric
    ref = quantize_grouped(codec, w.reshape(-1, 1))
    assert torch.equal(res.weight.reshape(-1, 1), ref.xhat)
    stored = res.stored().tensors
    for key, t in ref.stored.tensors.items():
        assert torch.equal(stored[key], t), key
    fb = quantize_layer(w, h, codec, error_feedback=True)
    assert fb.proxy_loss < res.proxy_loss
    assert torch.equal(codec.decode(codec.unpack(fb.stored().tensors, w.numel()), fb.per_vector_scales())
                       .reshape(w.shape), fb.weight)


def test_stored_tensors_a_runtime_does_not_read_are_found_and_stay_on_the_host_device():
    """keep_stored_on_host: the dense runtime reads no stored tensor (all are movable); a runtime that
    views a stored tensor keeps it; on the CPU nothing moves and the output is unchanged."""
    from pvq.eval.runs import model_memory_bytes
    from pvq.models import keep_stored_on_host, runtime_tensor_list

    lin, h = layer()
    q, _ = quantize(lin, h, make_codec("pvq", 3.0, 16, group_size=11), (1, 2))
    keys = set(q.stored_keys)
    q.clear_cache()
    assert set(q.stored_keys_unread_by_runtime()) == keys  # no runtime yet
    x = torch.randn(3, 176)
    y = q(x)
    assert set(q.stored_keys_unread_by_runtime()) == keys  # the dense weight is its own storage
    codes = q.stored_tensors()["codes"]

    class Runtime:  # a kernel runtime object holding a view of the stored codes
        def __init__(self):
            self.words = codes.view(-1)[1:]
            self.more = {"scales": [torch.ones(2)]}

    q._runtime = ("dense", {"weight": q.dequantize(), "rt": Runtime()})
    assert set(q.stored_keys_unread_by_runtime()) == keys - {"codes"}
    assert len(runtime_tensor_list(q.runtime_tensors())) == 3
    q.clear_cache()
    model = torch.nn.Sequential(q)
    assert keep_stored_on_host(model) == 0 and q.stored_on_host
    assert torch.equal(q(x), y) and q.move_stored_to_host() == 0  # on the CPU nothing moves
    assert all(t.device.type == "cpu" for t in q.stored_tensors().values())
    total = model_memory_bytes(model)
    assert total == model_memory_bytes(model, "cpu") > sum(t.nbytes for t in q.stored_tensors().values())
    assert model_memory_bytes(model, "cuda") == 0
    keep_stored_on_host(model, False)
    assert not q.stored_on_host
