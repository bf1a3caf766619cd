"""Quantized layers as single operators under torch.compile (pvq.models.compile_ops): one graph for a whole
quantized tiny Llama, each quantized product one ``pvq::`` node, the same logits as the eager model; copies and
freed models are refused or traced as before, never run through another layer's codes."""

import copy
import gc
import pickle

import pytest
import torch

from pvq.codecs import make_codec
from pvq.errors import PvqError
from pvq.models import QuantizeConfig, quantize_model
from pvq.models import prepare_for_compile
from pvq.models.compile_ops import compile_handle, is_registered, quantized_gated_linear, quantized_linear
from pvq.models.merging import fuse_for_decoding
from quantized_layers import random_layer
from tiny_models import calib, quantized, tiny

OPS = {torch.ops.pvq.quantized_linear.default: "linear", torch.ops.pvq.quantized_gated_linear.default: "gated"}


@pytest.fixture(scope="module")
def fused_model():
    """A tiny Llama quantized at 3 bits under the fused plan, q/k/v and gate/up merged, MLPs routed."""
    torch._dynamo.reset()
    model = tiny("llama", num_hidden_layers=3).eval()
    quantize_model(model, calib(4, 16), QuantizeConfig("pvq", bits=3, dim=8, rotation="fused", n_samples=4,
                                                       seq_len=16), device="cpu", progress=False, log=None)
    fuse_for_decoding(model)
    return model


def _graphs(fn, *args):
    """(outputs of ``fn`` compiled whole, the FX graphs Dynamo made, their pvq operator nodes by kind)."""
    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    out = torch.compile(fn, backend=keep, fullgraph=True, dynamic=False)(*args)
    kinds = [OPS[n.target] for g in graphs for n in g.graph.nodes if n.target in OPS]
    return out, graphs, kinds


def _logits(model):
    x = calib(2, 9, seed=7)
    return lambda: model(x).logits


def test_every_quantized_product_is_one_operator_of_one_graph(fused_model):
    layers = quantized(fused_model)
    products = sum(type(q).__name__ == "QuantizedLinear" for q in layers.values())
    assert prepare_for_compile(fused_model) == products == 3 * 4  # merged q/k/v, o, merged gate/up, down
    handles = {n: compile_handle(q) for n, q in layers.items()}
    assert len(set(handles.values())) == products and prepare_for_compile(fused_model) == products
    assert {n: compile_handle(q) for n, q in layers.items()} == handles  # kept: graphs compiled before still run
    with torch.no_grad():
        eager = _logits(fused_model)()
        out, graphs, kinds = _graphs(_logits(fused_model))
    assert len(graphs) == 1
    assert sorted(kinds) == ["gated"] * 3 + ["linear"] * 9  # down_proj's gated product; q/k/v, o, gate/up
    torch.testing.assert_close(out, eager, rtol=0, atol=1e-5)


def test_unprepared_and_copied_layers_are_traced_as_before(fused_model):
    prepare_for_compile(fused_model)
    twin = copy.deepcopy(fused_model)  # carries the handles' attribute, but is not their registered layer
    assert all(compile_handle(q) == 0 for q in quantized(twin).values())
    with torch.no_grad():
        eager = _logits(twin)()
        out, graphs, kinds = _graphs(_logits(twin))
    assert kinds == [] and len(graphs) == 1
    torch.testing.assert_close(out, eager, rtol=0, atol=1e-5)


def test_a_copy_holds_no_handle_of_its_original_until_prepared():
    layer = random_layer(make_codec("pvq", bits=3, dim=8), 24, 128, seed=3)
    holder = torch.nn.Sequential(layer)
    prepare_for_compile(holder)
    handle = compile_handle(layer)
    assert handle and is_registered(layer)
    assert compile_handle(pickle.loads(pickle.dumps(layer))) == 0
    shallow = copy.copy(layer)  # shares its original's handle (and tensors) until prepared itself
    assert compile_handle(shallow) == handle and not is_registered(shallow)
    assert prepare_for_compile(torch.nn.Sequential(shallow)) == 1
    assert is_registered(shallow) and is_registered(layer) and compile_handle(shallow) not in (0, handle)
    assert compile_handle(layer) == handle


def test_a_freed_layer_is_refused_by_name():
    layer = random_layer(make_codec("pvq", bits=3, dim=8), 24, 128, seed=1)
    holder = torch.nn.Sequential(layer)
    assert prepare_for_compile(holder) == 1
    handle = compile_handle(layer)
    x = torch.randn(3, 128)
    torch.testing.assert_close(quantized_linear(x, handle), layer(x), rtol=0, atol=0)
    del holder, layer
    gc.collect()
    with pytest.raises(PvqError, match=f"no quantized layer has compile handle {handle}"):
        quantized_linear(x, handle)


def test_the_operators_pass_torch_s_operator_checks():
    layer = random_layer(make_codec("pvq", bits=3, dim=8), 40, 128, seed=2)
    holder = torch.nn.Sequential(layer)
    prepare_for_compile(holder)
    handle = compile_handle(layer)
    checks = ("test_schema", "test_faketensor", "test_aot_dispatch_static")
    torch.library.opcheck(quantized_linear, (torch.randn(2, 5, 128), handle), test_utils=checks)
    gate, up = torch.randn(3, 128), torch.randn(3, 128)
    torch.library.opcheck(quantized_gated_linear, (gate, up, handle, "silu"), test_utils=checks)
    torch.testing.assert_close(quantized_gated_linear(gate, up, handle, "silu"),
                               layer(torch.nn.functional.silu(gate) * up), rtol=0, atol=1e-6)


def test_the_operators_run_a_layer_with_the_launches_its_handle_asks_for(monkeypatch):
    """prepare_for_compile(..., programmatic_launch=True): the operators run the layer's backend inside
    programmatic_launches (its CUDA kernels then launch as programmatic dependent launches); False (the default, and
    set again by a later call): outside; calls outside the operators never."""
    from pvq.models.backends import programmatic_launch_wanted

    layer = random_layer(make_codec("pvq", bits=3, dim=8), 24, 128, seed=4)
    holder = torch.nn.Sequential(layer)
    seen = []
    forward, gated = type(layer).forward, type(layer).gated_forward

    def spy(self, *args):
        seen.append(programmatic_launch_wanted())
        return forward(self, *args)

    def spy_gated(self, *args):
        seen.append(programmatic_launch_wanted())
        return gated(self, *args)

    monkeypatch.setattr(type(layer), "forward", spy)
    monkeypatch.setattr(type(layer), "gated_forward", spy_gated)
    x = torch.randn(2, 128)
    for flag in (True, False, True):
        prepare_for_compile(holder, programmatic_launch=flag)
        handle = compile_handle(layer)
        quantized_linear(x, handle)
        quantized_gated_linear(x, x, handle, "silu")
    layer(x)
    assert seen[:6] == [True, True, False, False, True, True] and seen[6:] and not any(seen[6:])
    assert not programmatic_launch_wanted()
    assert repr(getattr(layer, "_pvq_compile_handle")) == f"CompileHandle({handle}, programmatic)"
