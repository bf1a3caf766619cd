"""Rotation plans: the fused rewrite is exact, layers get the plan's rotations, checkpoints keep it."""

import pytest
import torch

from pvq.errors import QuantizeError
from pvq.models import QuantizeConfig, load_quantized, quantize_model, save_quantized
from pvq.models.qlinear import QuantizedLinear, set_activation_quant
from pvq.models.rotation_plan import (
    FOLD_RULES,
    StreamRotation,
    fold_rotations,
    fused_unsupported_reason,
    model_rotation,
)
from pvq.models.format import online_rotations_per_block
from pvq.transforms import LayerRotation
from tiny_models import DENSE_FAMILIES, FAMILY_CONFIGS, MOE_FAMILIES, X, calib, family_available, quantized, tiny

FUSED_FAMILIES = [f for f in FAMILY_CONFIGS if FAMILY_CONFIGS[f][0] in FOLD_RULES]


def _perturbed(family: str, **extra):
    """A tiny model whose norms and biases are not at their initial values (so folding them matters)."""
    m = tiny(family, **extra)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return m


@pytest.mark.parametrize("family", FUSED_FAMILIES)
@pytest.mark.parametrize("tied", [False, True])
def test_fold_keeps_the_function(family, tied):
    if not family_available(family):
        pytest.skip(f"transformers lacks {family}")
    m = _perturbed(family, tie_word_embeddings=tied)
    with torch.no_grad():
        ref = m(X).logits.double()
        before = {n: p.clone() for n, p in m.named_parameters()}
        rec = fold_rotations(m, seed=5)
        out = m(X).logits.double()
    assert rec.ends == ("online" if tied else "folded")
    assert (out - ref).abs().max().item() < 2e-5 * max(1.0, ref.abs().max().item())
    changed = [n for n, p in m.named_parameters() if not torch.equal(p, before[n])]
    assert any("o_proj" in n for n in changed) and any("down_proj" in n for n in changed)
    assert (model_rotation(m) is rec) and (("embed" in " ".join(changed)) != tied)


def test_fold_refuses_twice_and_unfoldable_families():
    m = tiny("llama")
    fold_rotations(m)
    with pytest.raises(QuantizeError, match="already"):
        fold_rotations(m)
    for family in ("phi", "gpt2", "olmo2", "mixtral"):
        if family_available(family):
            assert fused_unsupported_reason(tiny(family)) is not None
            with pytest.raises(QuantizeError, match="--rotation layer"):
                fold_rotations(tiny(family))


def test_layer_rotation_one_sided():
    r = LayerRotation(12, 16, None, 7)
    assert r.u is None and r.online_rotations == 1
    w = torch.randn(12, 16, dtype=torch.float64)
    x = torch.randn(3, 16, dtype=torch.float64)
    assert torch.allclose(r.rotate_input(x) @ r.rotate_weight(w).T, x @ w.T, atol=1e-12)
    assert torch.allclose(r.unrotate_weight(r.rotate_weight(w)), w, atol=1e-12)
    assert LayerRotation.from_seeds(12, 16, r.seeds()) == r
    with pytest.raises(Exception, match="at least one side"):
        LayerRotation(12, 16, None, None)


def test_config_rotation_plan_resolution():
    assert QuantizeConfig("pvq").rotation_plan == "fused"  # 3 bits
    assert QuantizeConfig("pvq", bits=2).rotation_plan == "layer"  # fused costs more there (README)
    assert QuantizeConfig("e8", bits=3).rotation_plan == "layer"  # e8 pays +2.5% under fused at 3 bits
    assert QuantizeConfig("pvq", rotate=False).rotation_plan == "none"
    assert QuantizeConfig("gptq").rotation_plan == "none"
    assert QuantizeConfig("gptq", rotation="fused").use_rotation
    with pytest.raises(QuantizeError, match="contradicts"):
        QuantizeConfig("pvq", rotate=False, rotation="fused")
    with pytest.raises(QuantizeError, match="one of"):
        QuantizeConfig("pvq", rotation="both")
    # a config written before rotation plans (format <= 3) read its rotations per layer
    old = QuantizeConfig("pvq").to_dict()
    del old["rotation"]
    assert QuantizeConfig.from_dict(old).rotation_plan == "layer"
    assert QuantizeConfig.from_dict({**old, "method": "rtn"}).rotation_plan == "none"


def _quantize(model, plan, bits=4.0, **kw):
    cfg = QuantizeConfig("pvq", bits=bits, dim=8, rotation=plan, n_samples=4, seq_len=16, **kw)
    return quantize_model(model, calib(4, 16), cfg, device="cpu", progress=False, log=None)


@pytest.mark.parametrize("tied", [False, True])
def test_fused_plan_quantizes_saves_and_loads(tmp_path, tied):
    model = tiny("llama", tie_word_embeddings=tied)
    report = _quantize(model, "fused")
    assert any("rotation plan: fused" in n for n in report.notes)
    layers = quantized(model)
    for name, q in layers.items():
        if name.endswith("mlp.down_proj"):
            assert q.rotation is not None and q.rotation.u is None and q.rotation.v is not None
        else:
            assert q.rotation is None
    assert online_rotations_per_block(model) == 1 + (1 if tied else 0)  # 2 stream rotations over 2 blocks
    with torch.no_grad():
        want = model(X).logits
    save_quantized(model, tmp_path / "ckpt", report)
    for via in ("transformers", "direct"):
        loaded = load_quantized(tmp_path / "ckpt", via=via)
        assert model_rotation(loaded) == model_rotation(model)
        with torch.no_grad():
            assert torch.equal(loaded(X).logits, want), via
    from transformers import AutoModelForCausalLM

    import pvq  # noqa: F401  (the quantizer is registered)

    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "ckpt"))
    with torch.no_grad():
        assert torch.equal(plain(X).logits, want)


def test_fused_checkpoint_rotation_record_is_checked(tmp_path):
    import json

    from pvq.errors import CheckpointError

    model = tiny("llama", tie_word_embeddings=True)
    save_quantized(model, tmp_path / "c", _quantize(model, "fused"))
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    q = cfg["quantization_config"]
    assert q["format_version"] == 5 and q["rotation"]["ends"] == "online"
    assert q["online_rotations_per_block"] == 2
    q["rotation"]["stream_seed"] += 1
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="rotation record"):
        load_quantized(tmp_path / "c", via="direct")


def test_fallback_family_runs_layer_plan_whole():
    model = tiny("phi") if family_available("phi") else pytest.skip("no phi")
    report = _quantize(model, "fused", bits=3.0)
    assert any("rotation plan: layer for the whole model" in n for n in report.notes)
    assert all(q.rotation is not None and q.rotation.online_rotations == 2 for q in quantized(model).values())
    assert model_rotation(model) is None


def test_activation_quant_under_fused_rotates_only_down_and_o_proj_inputs():
    model = tiny("llama")
    _quantize(model, "fused", act_bits=8.0, act_method="rtn")
    layers = quantized(model)
    acts = {n: q.act_quant for n, q in layers.items()}
    assert all(a is not None for a in acts.values())
    online = {n for n in acts if n.endswith(("down_proj", "o_proj"))}
    assert {n for n, a in acts.items() if a.rotate} == online
    assert {n for n, q in layers.items() if q.rotation is not None} == online
    assert online_rotations_per_block(model) == 2
    with torch.no_grad():
        assert torch.isfinite(model(X).logits).all()
    # W16 rows: plain linears of a folded model rotate the same inputs
    plain = tiny("llama")
    fold_rotations(plain)
    from pvq.models.activations import ActivationQuant, ActQuantLinear

    set_activation_quant(plain, ActivationQuant("rtn", 8.0, None, True, 1.0, None), plain=True)
    rotating = {n for n, m in plain.named_modules() if isinstance(m, ActQuantLinear) and m.rotation is not None}
    assert rotating == {n for n, m in plain.named_modules() if isinstance(m, ActQuantLinear)
                        and n.endswith(("down_proj", "o_proj"))} and rotating


def test_fused_plan_quality_close_to_layer():
    """On a tiny model at 4 bits, both plans reconstruct the logits to a similar error."""
    base = tiny("llama", tie_word_embeddings=False)
    with torch.no_grad():
        ref = base(X).logits
    errs = {}
    for plan in ("fused", "layer"):
        m = tiny("llama", tie_word_embeddings=False)
        _quantize(m, plan)
        with torch.no_grad():
            errs[plan] = ((m(X).logits - ref).norm() / ref.norm()).item()
    assert errs["fused"] < 0.2 and errs["layer"] < 0.2
    assert errs["fused"] < 2 * errs["layer"] + 0.02, errs


def test_stream_rotation_record_round_trip():
    rec = StreamRotation("fused", 64, 16, 1, 2, "online")
    assert StreamRotation.from_dict(rec.to_dict()) == rec
    with pytest.raises(QuantizeError):
        StreamRotation.from_dict({**rec.to_dict(), "ends": "sideways"})



def test_layer_rotation_in_blocks():
    from pvq.errors import TransformError
    from pvq.transforms import BlockHadamard

    r = LayerRotation(12, 48, None, 7, 16)
    assert isinstance(r.v, BlockHadamard) and r.v.block == 16 and r.online_rotations == 1
    w = torch.randn(12, 48, dtype=torch.float64)
    x = torch.randn(3, 48, dtype=torch.float64)
    assert torch.allclose(r.rotate_input(x) @ r.rotate_weight(w).T, x @ w.T, atol=1e-12)
    assert torch.allclose(r.unrotate_weight(r.rotate_weight(w)), w, atol=1e-12)
    h = x.T @ x
    assert torch.allclose(r.rotate_hessian(h, rows_per_chunk=5), r.v.matrix() @ h @ r.v.matrix().T, atol=1e-12)
    assert r.seeds() == {"out_seed": None, "in_seed": 7, "in_block": 16}
    assert LayerRotation.from_seeds(12, 48, r.seeds()) == r
    assert "in_block" not in LayerRotation(12, 48, None, 7).seeds()  # whole-input rotations keep the older form
    assert LayerRotation.from_seeds(12, 48, {"out_seed": None, "in_seed": 7}).in_block is None
    with pytest.raises(TransformError, match="dividing in_features=48"):
        LayerRotation(12, 48, None, 7, 20)
    with pytest.raises(TransformError, match="needs the input side"):
        LayerRotation(12, 48, 3, None, 16)


def test_config_rotation_block():
    cfg = QuantizeConfig("pvq", bits=3, rotation_block=16)
    assert cfg.rotation_plan == "fused" and QuantizeConfig.from_dict(cfg.to_dict()).rotation_block == 16
    old = QuantizeConfig("pvq").to_dict()
    del old["rotation_block"]  # written before chunked rotations
    assert QuantizeConfig.from_dict(old).rotation_block == 0  # the whole input, as then
    with pytest.raises(QuantizeError, match="add --rotation fused"):
        QuantizeConfig("pvq", bits=2, rotation_block=16)  # the layer plan at 2 bits
    with pytest.raises(QuantizeError, match="integer >= 2"):
        QuantizeConfig("pvq", rotation_block=1)


def test_fused_plan_in_blocks_quantizes_saves_and_loads(tmp_path):
    base = tiny("llama", tie_word_embeddings=False)
    with torch.no_grad():
        ref = base(X).logits
    model = tiny("llama", tie_word_embeddings=False)
    report = _quantize(model, "fused", rotation_block=16)  # intermediate 176 = 11 x 16
    assert any("in chunks of 16 inputs" in n for n in report.notes)
    downs = {n: q for n, q in quantized(model).items() if n.endswith("mlp.down_proj")}
    assert downs and all(q.rotation.in_block == 16 and q.rotation.v.block == 16 for q in downs.values())
    with torch.no_grad():
        want = model(X).logits
    assert ((want - ref).norm() / ref.norm()).item() < 0.2
    save_quantized(model, tmp_path / "ckpt", report)
    for via in ("transformers", "direct"):
        loaded = load_quantized(tmp_path / "ckpt", via=via)
        assert all(quantized(loaded)[n].rotation == q.rotation for n, q in downs.items())
        with torch.no_grad():
            assert torch.equal(loaded(X).logits, want), via


@pytest.mark.parametrize("inp, block, want", [
    (11008, None, 256), (14336, None, 256), (28672, None, 256),  # 7B, Llama-3 8B, 70B: chunks of 256 by default
    (4096, None, None), (8192, None, None), (1032, None, None), (176, None, None),  # power of two, or 256 no divisor
    (11008, 0, None), (11008, 43, 43), (176, 16, 16)])  # 0: the whole input; a number: that chunk
def test_online_rotation_block_default(inp, block, want):
    from pvq.models.plan import online_rotation_block

    assert online_rotation_block(inp, block) == want


def test_fused_plan_chunks_a_wide_down_proj_by_default_and_zero_keeps_it_whole():
    """A Llama whose MLP is 768 wide (3 x 256, not a power of two): down_proj's online rotation in chunks of 256
    unless rotation_block=0; the plan alone (no quantization)."""
    model = tiny("llama", intermediate_size=768)
    for block, want in ((None, 256), (0, None)):
        plan = QuantizeConfig("pvq", bits=3.0, dim=8, rotation="fused", rotation_block=block, n_samples=4,
                              seq_len=16).plan(model)
        downs = [p.rotation for p in plan.layers if p.name.endswith("down_proj")]
        assert downs and all(r.in_block == want for r in downs), block
        assert all(p.rotation is None for p in plan.layers if p.name.endswith("up_proj"))


def test_rotation_block_that_does_not_divide_is_refused_before_any_work():
    model = tiny("llama")
    cfg = QuantizeConfig("pvq", bits=4.0, dim=8, rotation="fused", rotation_block=32, n_samples=4, seq_len=16)
    with pytest.raises(QuantizeError, match=r"does not divide the 176 inputs of .*down_proj.*: 2, 4, 8, 16, 44, 88, 176$"):
        cfg.plan(model)


assert set(DENSE_FAMILIES) | set(MOE_FAMILIES) == set(FAMILY_CONFIGS)
