"""Every supported decoder family: quantize, reload with identical logits, evaluate.

Tiny random models built from each family's transformers config class
(``tests/tiny_models.py``: 2 blocks, hidden 64, MLP 176 = 16 * 11 so that
pvq's D=32 does not divide the down projection, 4 experts for MoE families).
"""

import math
import warnings

import pytest
import torch
from tiny_models import DENSE_FAMILIES, MOE_FAMILIES, X, calib, char_tokenizer, family_available, quantized, tiny

from pvq.eval.runs import linear_weight_bits, run_eval
from pvq.models import QuantizeConfig, load_quantized, quantize_model, read_quantization_config, save_quantized
from pvq.models.structure import decoder_blocks, expert_stacks, is_linear

TEXT = ("The quick brown fox jumps over the lazy dog. " * 4 + "Pack my box with five dozen liquor jugs.\n") * 3


def _family(family):
    if not family_available(family):
        pytest.skip(f"the installed transformers has no config class for {family}")
    return tiny(family)


def _plain_block_linears(model) -> list[str]:
    path, blocks = decoder_blocks(model)
    return [f"{path}.{i}.{n}" for i, b in enumerate(blocks) for n, m in b.named_modules() if is_linear(m)]


def _eval(path, tmp_path) -> dict:
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    out = run_eval(str(path), data=str(data), context=32, stride=32, max_tokens=160)
    assert math.isfinite(out["perplexity"]) and out["perplexity"] > 1
    return out


@pytest.mark.parametrize("family", DENSE_FAMILIES)
def test_dense_family_quantizes_reloads_and_evaluates(family, tmp_path):
    model = _family(family)
    tok = char_tokenizer()
    # pvq eval of the unquantized model: every block weight at its dtype's 32 bits
    model.save_pretrained(tmp_path / "fp32")
    tok.save_pretrained(tmp_path / "fp32")
    assert linear_weight_bits(model) == 32.0
    assert _eval(tmp_path / "fp32", tmp_path)["bits_per_weight"] == 32.0

    names = _plain_block_linears(model)
    assert names and len(names) >= 4
    report = quantize_model(model, calib(4, 32), QuantizeConfig(method="pvq", bits=3, n_samples=4, seq_len=32),
                            progress=False, log=None)
    # every linear of every block quantized (nn.Linear and Conv1D), nothing kept
    assert sorted(quantized(model)) == sorted(names) and not _plain_block_linears(model)
    assert report.quantized_fraction == 1.0 and report.kept == {}
    dims = {s.in_features: s.dim for s in report.layers}
    assert all(d == (16 if n % 32 else 32) for n, d in dims.items()), dims  # D per layer, not one fallback
    assert 2.9 < report.bits_per_weight < 3.05
    ref = model(X).logits
    save_quantized(model, tmp_path / "q", report, tokenizer=tok)
    qdict = read_quantization_config(tmp_path / "q")
    assert qdict["bits_per_weight"] == pytest.approx(report.bits_per_weight) and qdict["kept"] == {}
    assert {e["codec"]["dim"] for e in qdict["modules"].values()} == set(dims.values())
    for via in ("direct", "transformers"):
        with warnings.catch_warnings():  # no silent fallback from the transformers path to the direct one
            warnings.filterwarnings("error", message=".*through transformers failed")
            loaded = load_quantized(tmp_path / "q", via=via)
        assert torch.equal(loaded(X).logits, ref), via
    assert _eval(tmp_path / "q", tmp_path)["bits_per_weight"] == pytest.approx(qdict["bits_per_weight"])


# routers (and qwen2_moe's shared-expert gate) are the only block weights kept in their dtype
KEPT = {
    "mixtral": ("mlp.gate.weight",), "qwen3_moe": ("mlp.gate.weight",), "olmoe": ("mlp.gate.weight",),
    "granitemoe": ("block_sparse_moe.router.weight",), "gpt_oss": ("mlp.router.weight",),
    "qwen2_moe": ("mlp.gate.weight", "mlp.shared_expert_gate.weight"), "deepseek_v3": ("mlp.gate.weight",),
}


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_moe_family_quantizes_experts_reloads_and_evaluates(family, tmp_path):
    model = _family(family)
    tok = char_tokenizer()
    path, blocks = decoder_blocks(model)
    stacks = {f"{path}.{i}.{s.name}": s for i, b in enumerate(blocks) for s in expert_stacks(b)}
    assert stacks and all(s.num_experts == 4 for s in stacks.values())
    model.save_pretrained(tmp_path / "fp32")
    tok.save_pretrained(tmp_path / "fp32")
    assert _eval(tmp_path / "fp32", tmp_path)["bits_per_weight"] == 32.0  # experts and routers counted too

    ids = calib(4, 32)
    lines = []
    report = quantize_model(model, ids, QuantizeConfig(method="pvq", bits=3, n_samples=4, seq_len=32),
                            progress=False, log=lines.append)
    # every expert of every stack quantized with its own codes, the 3-D parameters gone
    experts = [s for s in report.layers if s.tokens is not None]
    assert len(experts) == 4 * len(stacks)
    assert not [n for n, p in model.named_parameters() if p.dim() == 3]
    kept_linears = {f"{path}.{i}.{k.rpartition('.')[0]}" for i, b in enumerate(blocks) for k in KEPT[family]
                    if _has(b, k) and is_linear(b.get_submodule(k.rpartition(".")[0]))}
    assert set(_plain_block_linears(model)) == kept_linears  # every other linear quantized
    # routed Hessians: over the 4 experts of a stack, every calibration token counted top_k times
    top_k = model.config.num_experts_per_tok
    for name in stacks:
        counts = [s.tokens for s in experts if s.name.startswith(name + "_pvq.")]
        assert len(counts) == 4 and sum(counts) == ids.numel() * top_k, (name, counts)
    pooled = [s for s in experts if s.hessian == "pooled"]
    assert all(s.tokens < s.in_features for s in pooled)
    assert all(s.hessian == "routed" for s in experts if s.tokens >= s.in_features)
    if pooled:
        assert any("pooled Hessian" in line for line in lines)
    # the rate counts every block weight: the kept routers at 32 bits
    kept = {f"{path}.{i}.{k}" for i, b in enumerate(blocks) for k in KEPT[family] if _has(b, k)}
    assert set(report.kept) == kept and all(k["bits"] == 32 for k in report.kept.values())
    assert 0.99 < report.quantized_fraction < 1.0
    assert report.bits_per_weight == pytest.approx(report.stored_bits / report.num_weights)
    assert 3.0 < report.bits_per_weight < 3.2  # above the quantized weights' own rate by the routers' share
    ref = model(X).logits
    save_quantized(model, tmp_path / "q", report, tokenizer=tok)
    qdict = read_quantization_config(tmp_path / "q")
    assert set(qdict["experts"]) == set(stacks) and set(qdict["kept"]) == kept
    assert qdict["bits_per_weight"] == pytest.approx(report.bits_per_weight)
    for via in ("direct", "transformers"):
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*through transformers failed")
            loaded = load_quantized(tmp_path / "q", via=via)
        assert torch.equal(loaded(X).logits, ref), via
    assert _eval(tmp_path / "q", tmp_path)["bits_per_weight"] == pytest.approx(qdict["bits_per_weight"])


def _has(block, name: str) -> bool:
    try:
        block.get_parameter(name)
        return True
    except AttributeError:
        return False



def test_quantize_run_of_an_fp16_moe_model_counts_its_routers_at_16_bits(tmp_path):
    """`pvq quantize` (run_quantize) on an fp16 Mixtral: the JSON's rate and kept list match the checkpoint's."""
    from pvq.eval.runs import QuantizeRequest, run_quantize

    src = tmp_path / "src"
    tiny("mixtral").to(torch.float16).save_pretrained(src)
    char_tokenizer().save_pretrained(src)
    data = tmp_path / "calib.txt"
    data.write_text(TEXT * 3)
    cfg = QuantizeConfig(method="rtn", bits=4, n_samples=2, seq_len=32)
    _, _, summary = run_quantize(QuantizeRequest(str(src), cfg, calib=str(data), output=str(tmp_path / "q")),
                                 progress=False)
    qdict = read_quantization_config(tmp_path / "q")
    assert summary["kept"] == sorted(qdict["kept"]) == ["model.layers.0.mlp.gate.weight", "model.layers.1.mlp.gate.weight"]
    assert set(qdict["kept"].values()) == {16}
    assert summary["bits_per_weight"] == pytest.approx(qdict["bits_per_weight"])
    assert summary["quantized_fraction"] == pytest.approx(qdict["quantized_fraction"]) and summary["quantized_fraction"] < 1
    assert _eval(tmp_path / "q", tmp_path)["bits_per_weight"] == pytest.approx(qdict["bits_per_weight"])
