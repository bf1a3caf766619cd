"""Prefill's decode one layer ahead (:mod:`pvq.kernels.decode_ahead`): the products are the plain path's bit for
bit whatever order the layers run in; the schedule learns the order in one pass and holds no early decode past a
pass (CPU: Triton's interpreter, the early decode run at once; CUDA: on a side stream)."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import pvq.kernels  # noqa: F401  (registers the backend)
from pvq.errors import QuantizeError
from pvq.kernels.decode_ahead import DecodeAhead, enable_decode_ahead
from pvq.models import QuantizeConfig, quantize_model, set_backend
from tiny_models import X, calib, quantized, tiny

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class _Stub(nn.Module):
    def __init__(self, i: int) -> None:
        super().__init__()
        self.i = i


def _stub_decode(calls: list):
    def decode(layer, device, dtype):
        calls.append(layer.i)
        return torch.full((3, 5), float(layer.i), dtype=dtype, device=device)
    return decode


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=12), min_size=1, max_size=6), st.integers(1, 3))
def test_every_weight_is_its_own_layers_whatever_the_order(passes, depth):
    """Passes of layer calls in any order (repeats, skips, orders that change): each call gets its own layer's
    weight; hits + misses never exceed the launches; after a pass ends nothing early is held."""
    layers = [_Stub(i) for i in range(6)]
    calls: list = []
    ahead = DecodeAhead(depth)
    device = torch.device(DEVICE)
    for order in passes:
        ahead.begin_pass()
        for i in order:
            w = ahead.weight(layers[i], device, torch.float16, _stub_decode(calls))
            assert w.dtype == torch.float16 and bool((w == i).all())
            assert len(ahead._early) <= depth
        ahead.end_pass()
        assert not ahead._early
    assert ahead.hits + ahead.misses <= ahead.launched
    assert ahead.hits + len(calls) - ahead.launched == sum(map(len, passes))  # every call decoded once or taken


@pytest.mark.parametrize("depth", [1, 2])
def test_a_repeated_order_is_learnt_in_one_pass(depth):
    layers = [_Stub(i) for i in range(4)]
    calls: list = []
    ahead = DecodeAhead(depth)
    device = torch.device(DEVICE)
    for p in range(3):
        ahead.begin_pass()
        for i, m in enumerate(layers):
            ahead.weight(m, device, torch.float32, _stub_decode(calls))
            if p:  # the next `depth` layers under way (fewer near the end)
                assert [e.layer().i for e in ahead._early] == list(range(i + 1, min(4, i + 1 + depth)))
        ahead.end_pass()
        # the first pass learns (4 in place), each later one decodes its first layer in place, three ahead
        assert (ahead.hits, ahead.misses, ahead.launched) == (3 * p, 0, 3 * p)
    assert calls == [0, 1, 2, 3] * 3  # ahead or not, each layer decoded once a pass, in the order run
    if depth > 1:
        return
    ahead.begin_pass()  # layer 1 decoded ahead in layer 0's dtype, then asked for in another: dropped, in place
    ahead.weight(layers[0], device, torch.float32, _stub_decode(calls))
    assert ahead.weight(layers[1], device, torch.float16, _stub_decode(calls)).dtype == torch.float16
    assert (ahead.misses, calls[-3:]) == (1, [1, 1, 2])  # then layer 2 ahead
    ahead.begin_pass()  # a layer out of the learnt order: the early decode of layer 1 is dropped
    ahead.weight(layers[0], device, torch.float32, _stub_decode(calls))
    assert bool((ahead.weight(layers[3], device, torch.float32, _stub_decode(calls)) == 3).all())
    assert ahead.misses == 2


def test_a_layer_that_cannot_be_decoded_ahead_ends_the_walk():
    """Depth 3 over layers 0 1 2 3 where layer 1 has no prepared runtime now: nothing goes ahead past it (a queue
    with a gap would be dropped there), and every call still gets its layer's weight."""
    layers = [_Stub(i) for i in range(4)]
    calls: list = []
    stub = _stub_decode(calls)
    ahead = DecodeAhead(3)
    device = torch.device(DEVICE)
    for m in layers:  # learn the order
        ahead.weight(m, device, torch.float32, stub)
    ahead.begin_pass()
    unprepared = {1}

    def decode(layer, dev, dtype):
        return None if layer.i in unprepared else stub(layer, dev, dtype)

    ahead.weight(layers[0], device, torch.float32, decode)
    assert not ahead._early and ahead.launched == 0
    unprepared.clear()
    for m in layers[1:]:
        assert bool((ahead.weight(m, device, torch.float32, decode) == m.i).all())
    assert (ahead.hits, ahead.misses, ahead.launched) == (2, 0, 2)


def _model(bits: int = 3):
    model = tiny("llama", num_hidden_layers=2)
    quantize_model(model, calib(4, 16), QuantizeConfig(method="pvq", bits=bits, dim=8), progress=False, log=None)
    model.to(DEVICE)
    set_backend(model, "triton")
    return model


@pytest.mark.parametrize("bits, depth", [(3, 2), pytest.param(2, 1, marks=pytest.mark.skipif(
    DEVICE == "cpu", reason="off CUDA both rates run the same Triton decode (on CUDA: leaf pairs, whole points)"))])
def test_prefill_logits_equal_the_plain_paths_bit_for_bit(bits, depth):
    model = _model(bits)
    ids = X.to(DEVICE)  # 48 rows: above the fused kernels' 16, the whole-layer decode and one matmul
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        ahead = enable_decode_ahead(model, depth)
        n = len(quantized(model))
        got = [model(input_ids=ids).logits for _ in range(2)]
        assert (ahead.hits, ahead.misses) == (n - 1, 0)  # learnt in the first pass
        assert not ahead._early  # nothing held after a pass
        step = model(input_ids=ids[:1, :1]).logits  # 1 row: the fused kernels, no whole-layer decode
        assert ahead.launched == n - 1
        ahead.remove()
        assert all(m.decode_ahead is None for m in quantized(model).values())
        assert torch.equal(model(input_ids=ids[:1, :1]).logits, step)
    for g in got:
        assert torch.equal(g, plain)


def test_one_scheduler_a_model_and_copies_start_afresh():
    model = _model()
    ahead = enable_decode_ahead(model)
    with pytest.raises(QuantizeError, match="remove"):
        enable_decode_ahead(model)
    twin = copy.deepcopy(model)
    schedulers = {id(m.decode_ahead) for m in quantized(twin).values()}
    assert len(schedulers) == 1 and id(ahead) not in schedulers
    ahead.remove()
    enable_decode_ahead(model).remove()  # after remove() another may serve it
    with pytest.raises(QuantizeError, match="no quantized"):
        enable_decode_ahead(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(QuantizeError, match="positive"):
        DecodeAhead(0)
