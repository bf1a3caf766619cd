"""The ``triton`` backend on whole models: same logits as the dense path (CPU: Triton's interpreter,
asked for by name; CUDA: chosen automatically)."""

import pytest
import torch

import pvq.kernels  # noqa: F401  (registers the backend)
from pvq.models import QuantizeConfig, quantize_model, select_backend, set_backend
from tiny_models import X, calib, quantized, tiny

pytest.importorskip("triton", reason="Triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("method, bits, dim, options", [
    ("pvq", 3, 16, {}), ("pvq", 2, 8, {}), ("pvq", 3, 8, {}), ("pvq", 3, 8, {"index_order": "fischer"}),
    ("e8", 2, 8, {})])
def test_triton_backend_gives_the_dense_logits(method, bits, dim, options):
    model = tiny("llama", num_hidden_layers=1)
    config = QuantizeConfig(method=method, bits=bits, dim=dim, options=options)
    quantize_model(model, calib(4, 16), config, progress=False, log=None)
    model.to(DEVICE)
    ids = X[:1, :8].to(DEVICE)
    # 1 row: every family's fused decode-matmul (D = 8 split at 2 and 3 bits: the CUDA kernel where
    # it compiles); 8 rows: fused for E8 and Fischer-order PVQ; 24: decode + matmul
    assert_backend_gives_the_dense_logits(model, "triton", (ids[:, :1], ids, X[:, :12]))


def assert_backend_gives_the_dense_logits(model, backend: str, batches) -> None:
    """Each batch of token ids through ``backend`` gives the ``dense`` backend's logits (1e-4), every quantized layer
    run by ``backend``."""
    for batch_ids in batches:
        batch_ids = batch_ids.to(DEVICE)
        with torch.no_grad():
            set_backend(model, "dense")
            ref = model(input_ids=batch_ids).logits
            set_backend(model, backend)
            got = model(input_ids=batch_ids).logits
        assert {m.backend for m in quantized(model).values()} == {backend}
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


ROWS_SHAPE = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
"""Inputs of 128 and 256: scale groups of 16 vectors of 8 (the row-interleaved families')."""


@pytest.mark.parametrize("bits", [2, 3])
def test_triton_rows_backend_gives_the_dense_logits(bits):
    """The quad order (CUDA: the row-interleaved families' codes in quads, 1, 3, 8 and 12 rows through their kernels,
    24 through the decode; CPU: the same Triton families as ``triton``)."""
    model = tiny("llama", num_hidden_layers=1, **ROWS_SHAPE)
    config = QuantizeConfig(method="pvq", bits=bits, dim=8, group_size=16)  # the row-interleaved families' groups
    quantize_model(model, calib(4, 16), config, progress=False, log=None)
    model.to(DEVICE)
    assert_backend_gives_the_dense_logits(model, "triton-rows", (X[:1, :1], X[:1, :3], X[:1, :8], X[:, :12]))


def test_triton_rows_backend_lays_the_row_families_out_in_quads(monkeypatch):
    """Where the family takes the quad order (the row-interleaved ones), ``triton-rows`` asks for it and ``triton``
    does not; the quads decode to the same weights; the backend is never chosen automatically."""
    from pvq.kernels import backend as backend_module
    from pvq.kernels.leaf_rows import leaf_rows_decode_reference

    model = tiny("llama", num_hidden_layers=1, **ROWS_SHAPE)
    config = QuantizeConfig(method="pvq", bits=3, dim=8, group_size=16)
    quantize_model(model, calib(4, 16), config, progress=False, log=None)
    layer = next(iter(quantized(model).values()))
    rows_family = next(f for f in backend_module.KERNEL_FAMILIES if f.name == "pvq-leaf-rows-cuda")
    assert rows_family.quad_order
    monkeypatch.setattr(backend_module, "kernel_family", lambda codec: rows_family)
    cpu = torch.device("cpu")
    quads = backend_module.TritonRowsBackend().prepare(layer, cpu, torch.float32)["runtime"]
    plain = backend_module.TritonBackend().prepare(layer, cpu, torch.float32)["runtime"]
    assert quads.quad_swapped and not plain.quad_swapped
    assert torch.equal(leaf_rows_decode_reference(quads), leaf_rows_decode_reference(plain))
    assert not backend_module.TritonRowsBackend().automatic_on(torch.device("cuda"))


def test_automatic_choice_takes_triton_only_on_cuda():
    model = tiny("llama", num_hidden_layers=1)
    quantize_model(model, calib(4, 16), QuantizeConfig(method="pvq", bits=3, dim=16), progress=False, log=None)
    layer = next(iter(quantized(model).values()))
    assert select_backend(layer, torch.device("cpu")).name == "dense"
    if torch.cuda.is_available():
        assert select_backend(layer, torch.device("cuda")).name == "triton"
    wide = tiny("llama", num_hidden_layers=1)  # 5 bits at D=16: codes of more than 62 bits, beyond the kernels
    quantize_model(wide, calib(4, 16), QuantizeConfig(method="pvq", bits=5, dim=16), progress=False, log=None)
    layer = next(iter(quantized(wide).values()))
    assert layer.codec.code_bits > 62
    assert not pvq.kernels.TritonBackend().supports(layer, torch.device("cuda"))
    assert select_backend(layer, torch.device("cuda" if torch.cuda.is_available() else "cpu")).name == "dense"


def test_a_prepared_layer_is_not_asked_its_kernel_family_on_every_forward(monkeypatch):
    """The kernel families are asked once, when the runtime is prepared; a forward over a current runtime asks again
    only where the layer's codec is no longer the one the runtime was laid out for (every forward of a 7B
    prefill's 128 to 224 products, docs/kernels.md, session 26)."""
    import copy

    from pvq.kernels import backend as backend_module

    model = tiny("llama", num_hidden_layers=1)
    quantize_model(model, calib(4, 16), QuantizeConfig(method="pvq", bits=3, dim=8), progress=False, log=None)
    model.to(DEVICE)
    set_backend(model, "triton")
    layer = next(iter(quantized(model).values()))
    x = torch.randn(1, layer.in_features, device=DEVICE)
    asked = []
    family_of = backend_module.kernel_family
    monkeypatch.setattr(backend_module, "kernel_family", lambda codec: asked.append(codec) or family_of(codec))
    with torch.no_grad():
        first = layer(x)
        assert len(asked) >= 1  # preparing the runtime
        n = len(asked)
        assert torch.equal(layer(x), first) and len(asked) == n
        layer.codec = copy.copy(layer.codec)  # an equal codec, another object: asked again
        assert torch.equal(layer(x), first) and len(asked) > n


def test_a_layers_rotation_kernels_are_chosen_once_a_side_and_row_count(monkeypatch):
    """The rotation kernels are asked once for each side and number of rows (the layer plan's prefill makes 14
    rotations a block, docs/kernels.md, session 27); the rotated outputs stay the unchosen path's."""
    from pvq.kernels import backend as backend_module

    model = tiny("llama", num_hidden_layers=1)
    quantize_model(model, calib(4, 16), QuantizeConfig(method="pvq", bits=2, dim=8, rotation="layer"),
                   progress=False, log=None)
    model.to(DEVICE)
    set_backend(model, "triton")
    layer = next(iter(quantized(model).values()))
    assert layer.rotation.u is not None and layer.rotation.v is not None  # both sides online
    asked = []
    choose = backend_module._rotation_kernel
    monkeypatch.setattr(backend_module, "_rotation_kernel", lambda rh, device, rows: asked.append(rows) or
                        choose(rh, device, rows))
    with torch.no_grad():
        x = torch.randn(3, layer.in_features, device=DEVICE)
        first = layer(x)
        assert sorted(asked) == [3, 3]  # input and output side
        assert torch.equal(layer(x), first) and len(asked) == 2
        layer(torch.randn(5, layer.in_features, device=DEVICE))
        assert sorted(asked) == [3, 3, 5, 5]
        chosen = layer.runtime_tensors()["rotation_kernels"]
        assert len(chosen) == 4
        chosen.clear()
        unchosen = backend_module._rotate(layer, x, inverse=False)  # without a runtime's choices: asked each time
        assert torch.equal(backend_module._rotate(layer, x, inverse=False, chosen=chosen), unchosen)
