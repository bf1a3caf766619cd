"""q/k/v and gate/up merged into one product each: same outputs, the stacked weight bit for bit, refusals."""

import json

import pytest
import torch
from torch import nn

from pvq.codecs import make_codec
from pvq.errors import QuantizeError
from pvq.models import QuantizeConfig, has_merged_linears, merge_shared_input_linears, quantize_model, save_quantized
from pvq.models.merging import SharedInputLinears, SharedInputSlice, merge_linears, merge_refusal
from pvq.models.qlinear import set_backend
from quantized_layers import random_layer
from tiny_models import calib, family_available, quantized, tiny


def _quantized_tiny(plan: str, bits: float = 3.0, family: str = "llama"):
    model = tiny(family)
    cfg = QuantizeConfig("pvq", bits=bits, dim=8, rotation=plan, n_samples=4, seq_len=16)
    report = quantize_model(model, calib(4, 16), cfg, device="cpu", progress=False, log=None)
    return model, report


@pytest.fixture(scope="module")
def merged_model():
    """(tiny Llama quantized under fused, its report, what it was before merging, the merge report)."""
    model, report = _quantized_tiny("fused")
    x = calib(2, 12, seed=5)
    before = {"x": x, "logits": _logits(model, x),
              "weights": {n: q.rotated_weight() for n, q in quantized(model).items()},
              "bits": {n: q.stored_bits() for n, q in quantized(model).items()}}
    return model, report, before, merge_shared_input_linears(model)


def _logits(model, x):
    with torch.no_grad():
        return model(x).logits


def test_merge_keeps_the_outputs_and_stacks_the_codes(merged_model):
    model, _, before, report = merged_model
    blocks = len(model.model.layers)
    assert (report.groups, report.linears, report.skipped) == (2 * blocks, 5 * blocks, {})
    assert has_merged_linears(model)
    attn = model.model.layers[1].self_attn
    assert isinstance(attn.k_proj, SharedInputSlice) and attn.k_proj.out_features == 32
    merged = attn.q_proj.group.merged
    names = [f"model.layers.1.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj")]
    assert torch.equal(merged.rotated_weight(), torch.cat([before["weights"][n] for n in names]))  # bit for bit
    assert merged.out_features == 128 and merged.stored_bits() == sum(before["bits"][n] for n in names)
    torch.testing.assert_close(_logits(model, before["x"]), before["logits"], rtol=0, atol=1e-5)
    # the quantized layers are now the merged ones, each counted once
    assert sum(q.num_weights for q in quantized(model).values()) == sum(
        w.numel() for w in before["weights"].values())
    assert merge_shared_input_linears(model).skipped == {"q_proj/k_proj/v_proj": "already merged",
                                                          "gate_proj/up_proj": "already merged"}


def test_merged_model_runs_the_kernel_backend(merged_model):
    """The Triton backend (CPU interpreter here) runs a merged layer like any other."""
    model = merged_model[0]
    x = calib(1, 6, seed=9)
    want = _logits(model, x)
    set_backend(model, "triton")
    try:
        got = _logits(model, x)
        assert model.model.layers[0].mlp.gate_proj.group.merged.backend == "triton"
    finally:
        set_backend(model, None)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-4)


def test_merged_model_is_not_saved(merged_model, tmp_path):
    model, report = merged_model[:2]
    with pytest.raises(QuantizeError, match="save before merging"):
        save_quantized(model, tmp_path / "ckpt", report)
    assert not (tmp_path / "ckpt").exists()


def test_layer_plan_layers_stay_apart():
    model, _ = _quantized_tiny("layer", bits=4.0)
    report = merge_shared_input_linears(model)
    assert report.groups == 0 and not has_merged_linears(model)
    assert set(report.skipped.values()) == {"their input rotations differ"}
    assert "kept q_proj/k_proj/v_proj apart" in report.describe()


def test_refusals_name_the_difference():
    a = random_layer(make_codec("pvq", 3.0, 8, group_size=16), 32, 128, seed=1)
    b = random_layer(make_codec("pvq", 3.0, 8, group_size=16), 16, 128, seed=2)
    c = random_layer(make_codec("pvq", 2.0, 8, group_size=16), 16, 128, seed=3)
    d = random_layer(make_codec("pvq", 3.0, 8, group_size=16), 16, 256, seed=4)
    assert merge_refusal([a, b]) is None
    assert merge_refusal([a, c]) == "their codecs differ"
    assert merge_refusal([a, d]) == "their input sizes differ"
    assert merge_refusal([a]) == "fewer than two linears"
    assert merge_refusal([a, nn.Linear(128, 4)]).startswith("a mix of layer types")
    b.set_backend("dense-rotated")
    assert merge_refusal([a, b]) == "they are set to different backends"
    assert merge_refusal([nn.Linear(8, 4), nn.Linear(8, 4, bias=False)]) == "some have a bias and some not"
    from pvq.models.coding import entropy_code_model

    holder = nn.Sequential(*(random_layer(make_codec("uniform", 3.0), 64, 512, seed=s) for s in (5, 6)))
    assert entropy_code_model(holder) == 2
    assert merge_refusal(list(holder)).startswith("their codes are entropy-coded")
    with pytest.raises(QuantizeError, match="model_type"):
        merge_shared_input_linears(nn.Sequential(nn.Linear(2, 2)))


@pytest.mark.parametrize("name,dim", [("pvq", 8), ("e8", None), ("trellis", None), ("ecsq", None), ("uniform", None)])
def test_merged_codes_decode_to_the_stacked_weights(name, dim):
    """Codecs of every kind: codes unpacked, joined and stored again decode to the members' weights, bit for bit."""
    cd = make_codec(name, 3.0, dim)
    parts = [random_layer(cd, n, 512, seed=n) for n in (16, 8, 24)]
    holder = nn.Module()
    for i, p in enumerate(parts):
        holder.add_module(f"l{i}", p)
    want = torch.cat([p.rotated_weight() for p in parts])
    assert merge_linears(holder, ["l0", "l1", "l2"]) is None
    assert torch.equal(holder.l0.group.merged.rotated_weight(), want)
    assert [holder.l1.out_features, holder.l2.out_features] == [8, 24]


def test_layers_with_their_own_codebooks_stay_apart():
    cd = make_codec("kmeans", 3.0)
    g = torch.Generator().manual_seed(0)
    book_a, book_b = (cd.fit(torch.randn(4096, cd.dim, generator=g), torch.ones(4096)) for _ in range(2))
    a, b, c = random_layer(book_a, 16, 512, 1), random_layer(book_b, 16, 512, 2), random_layer(book_a, 32, 512, 3)
    assert merge_refusal([a, b]) == "their fitted codec data (codebooks) differ"
    assert merge_refusal([a, c]) is None


class _Counting(nn.Linear):
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x)


def test_the_group_computes_once_per_input():
    _Counting.calls = 0
    group = SharedInputLinears(_Counting(8, 7), [3, 4], ["a", "b"])
    a, b = SharedInputSlice(group, 0, 8), SharedInputSlice(group, 1, 8)
    x, y = torch.randn(2, 8), torch.randn(2, 8)
    full = group.merged(x)
    _Counting.calls = 0
    assert torch.equal(b(x), full[:, 3:]) and torch.equal(a(x), full[:, :3]) and _Counting.calls == 1  # any order
    a(x), a(x)  # a member called again on the same tensor: computed again
    assert _Counting.calls == 3
    b(x)  # the pending output of the second a(x)
    assert _Counting.calls == 3
    a(x), b(y)  # another input: computed for it
    assert _Counting.calls == 5
    assert list(dict(a.named_modules())) == ["", "group", "group.merged"] and list(dict(b.named_modules())) == [""]


@pytest.mark.skipif(not family_available("qwen2"), reason="transformers lacks qwen2")
def test_plain_linears_with_biases_merge():
    model = tiny("qwen2")  # q/k/v carry biases
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_()
    x = calib(2, 10, seed=4)
    want = _logits(model, x)
    report = merge_shared_input_linears(model)
    assert report.groups == 2 * len(model.model.layers)
    torch.testing.assert_close(_logits(model, x), want, rtol=0, atol=1e-5)


def test_cli_generate_merged_gives_the_same_tokens(capsys):
    from pvq.cli import main

    outs = []
    for extra in ([], ["--merge-projections"], ["--merge-projections", "--decode", "static"],
                  ["--merge-projections", "yes"], ["--merge-projections", "no"]):
        assert main(["generate", "--prompt", "def f(", "--max-new-tokens", "6", "--json", *extra]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert len({o["completion"] for o in outs}) == 1
    # auto (the default) merges on CUDA only: not here, on the CPU; the bare flag and "yes" merge, "no" does not
    assert "merged" not in outs[0] and "merged" not in outs[4]
    assert all(outs[i]["merged"].startswith("merged 40 linears into 16 products") for i in (1, 2, 3))


def test_generate_merges_by_default_where_the_model_runs_on_cuda(monkeypatch):
    """merge=None follows the device the model runs on: a model reporting a CUDA device is merged (the generation
    itself stubbed: no GPU here)."""
    from pvq.eval import generate as gen

    seen = {}
    monkeypatch.setattr(gen, "generate", lambda model, tok, prompt, cfg, device=None: {"completion": ""})
    monkeypatch.setattr("pvq.models.merging.fuse_for_decoding", lambda model: seen.setdefault("merged", "yes"))
    assert "merged" not in gen.run_generate(None, "x", device="cpu") and not seen
    assert gen.run_generate(None, "x", device="cuda")["merged"] == "yes"
    assert "merged" not in gen.run_generate(None, "x", device="cuda", merge=False)


def test_merged_layer_transcodes_to_the_rows_layout():
    """The CUDA kernels' runtime layout of a merged layer (transcoded on the CPU here) holds the members' rows."""
    from pvq.kernels.leaf_rows import leaf_rows_decode_reference, leaf_rows_runtime

    cd = make_codec("pvq", 3.0, 8, group_size=16)
    parts = [random_layer(cd, n, 256, seed=n) for n in (40, 24, 32)]  # 40: the first row group half empty
    holder = nn.Module()
    for i, p in enumerate(parts):
        holder.add_module(f"l{i}", p)
    want = torch.cat([leaf_rows_decode_reference(leaf_rows_runtime(p, "cpu")) for p in parts])
    assert merge_linears(holder, ["l0", "l1", "l2"]) is None
    merged = leaf_rows_runtime(holder.l0.group.merged, "cpu")
    assert merged.out_features == 96 and torch.equal(leaf_rows_decode_reference(merged), want)


def test_gated_mlps_routed_to_the_kernel_backend(monkeypatch):
    """A tiny Llama whose MLP is 256 wide (down_proj's input rotation a power of two under fused): routed and
    merged, the Triton backend computes each MLP's gated activation in the kernel that rotates down_proj's input."""
    triton_hadamard = pytest.importorskip("pvq.kernels.triton_hadamard")
    from pvq.models import route_gated_mlps

    model = tiny("llama", intermediate_size=256)
    cfg = QuantizeConfig("pvq", bits=3.0, dim=8, rotation="fused", n_samples=4, seq_len=16)
    quantize_model(model, calib(4, 16), cfg, device="cpu", progress=False, log=None)
    x = calib(1, 6, seed=2)
    want = _logits(model, x)
    blocks = len(model.model.layers)
    report = route_gated_mlps(model)
    assert (report.groups, report.skipped) == (blocks, {}) and report.describe().startswith(f"routed {blocks} gated")
    torch.testing.assert_close(_logits(model, x), want, rtol=0, atol=1e-6)  # the plain path: same operations
    assert merge_shared_input_linears(model).groups == 2 * blocks
    calls = []
    kernel = triton_hadamard.gated_hadamard_rotate
    monkeypatch.setattr(triton_hadamard, "gated_hadamard_rotate", lambda *a, **k: calls.append(a[0].n) or kernel(*a, **k))
    set_backend(model, "triton")
    try:
        got = _logits(model, x)
    finally:
        set_backend(model, None)
    assert calls == [256] * blocks
    torch.testing.assert_close(got, want, rtol=0, atol=2e-4)
    assert route_gated_mlps(model).skipped == {"mlp": "already routed"}
    mlp = model.model.layers[0].mlp
    down = mlp.down_proj
    mlp.down_proj = _Counting(down.in_features, down.out_features)  # replaced since: the plain form
    _Counting.calls = 0
    mlp(torch.randn(1, 2, down.out_features))
    assert _Counting.calls == 1


def test_gated_routing_leaves_what_it_cannot_take():
    from pvq.models import route_gated_mlps

    assert route_gated_mlps(tiny("llama")).skipped == {"mlp": "down_proj is not a quantized layer"}
    if family_available("gemma"):
        assert "activation" in route_gated_mlps(tiny("gemma")).skipped["mlp"]
    with pytest.raises(QuantizeError, match="model_type"):
        route_gated_mlps(nn.Sequential(nn.Linear(2, 2)))
