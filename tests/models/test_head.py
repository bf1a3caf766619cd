"""``quantize_head``: the LM head quantized with the method's codec after the blocks, under the Hessian of its
input (the final norm's output); both loaders rebuild it; the block rate leaves it out; the allocation's
budget counts it at its codec's rate; refused before any work where it cannot run."""

import pytest
import torch

from pvq.errors import QuantizeError
from pvq.models import QuantizeConfig, quantize_model
from pvq.models.allocation import AllocateConfig, embedding_bits
from pvq.models.format import head_bits_per_weight
from pvq.models.qlinear import QuantizedLinear
from tiny_models import calib, quantize_tables, quantized, saved_and_loaded, tiny, tiny_logits

X = calib(2, 16, seed=5)


def _run(plan="fused", head=True, bits=4.0, **kw):
    return quantize_tables(False, plan, bits, head, **kw)


@pytest.mark.parametrize("plan", ["fused", "layer"])
def test_head_is_quantized_after_the_blocks_which_stay_the_same(plan):
    ref = tiny_logits(X, tie_word_embeddings=False)
    m, report = _run(plan)
    plain, plain_report = _run(plan, head=False)
    assert isinstance(m.lm_head, QuantizedLinear) and not isinstance(plain.lm_head, QuantizedLinear)
    assert report.head is not None and report.head.name == "lm_head" and plain_report.head is None
    assert report.head.bits_per_weight == pytest.approx(head_bits_per_weight(m))
    assert 3.8 <= report.head.bits_per_weight <= 4.2
    assert report.bits_per_weight == plain_report.bits_per_weight  # the block rate leaves the head out
    qa, qb = quantized(m), quantized(plain)
    assert set(qa) - set(qb) == {"lm_head"}
    for n, layer in qb.items():  # the blocks' codes are those of the run without the head
        sa, sb = qa[n].stored_tensors(), layer.stored_tensors()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    with torch.no_grad():
        err = ((m(X).logits - ref).norm() / ref.norm()).item()
    assert err < 0.3
    assert "head" in report.to_dict() and report.to_dict()["head"]["name"] == "lm_head"
    rot = m.lm_head.rotation  # the layer plan rotates the head's input only (no mixing of vocabulary rows)
    assert rot is None if plan == "fused" else (rot.out_seed is None and rot.in_seed is not None)


@pytest.mark.parametrize("via", ["direct", "transformers"])
def test_saved_head_loads_to_the_same_logits(tmp_path, via):
    m, report = _run(bits=3.0)
    want, loaded, got = saved_and_loaded(m, report, tmp_path / "q", via, X)
    assert isinstance(loaded.lm_head, QuantizedLinear) and torch.equal(got, want)


def test_refused_before_any_work():
    tied = tiny("llama", tie_word_embeddings=True)
    cfg = QuantizeConfig(method="pvq", bits=3, quantize_head=True, n_samples=8, seq_len=32)
    with pytest.raises(QuantizeError, match="tie_word_embeddings"):
        quantize_model(tied, calib(), cfg, progress=False, log=None)
    assert not quantized(tied)
    untied = tiny("llama", tie_word_embeddings=False)
    with pytest.raises(QuantizeError, match="include the last block"):
        quantize_model(untied, calib(), cfg, progress=False, log=None, blocks=[0])
    assert not quantized(untied)
    with pytest.raises(QuantizeError, match="--quantize-head and --act-bits"):
        QuantizeConfig(method="pvq", bits=3, quantize_head=True, act_bits=4)
    with pytest.raises(QuantizeError, match="quantize_head must be True or False"):
        QuantizeConfig(method="pvq", bits=3, quantize_head=1)


def test_allocation_budget_counts_the_head_at_its_codec_rate():
    m = tiny("llama", tie_word_embeddings=False)
    emb, head = m.get_input_embeddings().weight, m.get_output_embeddings().weight
    n, kept = embedding_bits(m, 16)
    assert n == emb.numel() + head.numel() and kept == 16 * n
    _, counted = embedding_bits(m, 16, 3.25)
    assert counted == 16 * emb.numel() + int(-(-head.numel() * 3.25 // 1))
    alloc = dict(metric="proxy", rows=0.5, count_embeddings=True, kept_bits=8)  # (kept at 8 bits: a budget the tiny model meets)
    _, with_head = _run(bits=3.0, allocation=AllocateConfig(**alloc))
    _, kept_head = _run(bits=3.0, head=False, allocation=AllocateConfig(**alloc))
    rec, rec_kept = with_head.allocation, kept_head.allocation
    assert rec["embedding_bits"] < rec_kept["embedding_bits"]  # the head at about 3 bits, not 8
    assert rec["predicted_bits"] > rec_kept["predicted_bits"]  # so the blocks get more of the budget
    assert with_head.head is not None and rec["predicted_overall_bits_per_weight"] <= 3.0
