"""``quantize_embedding``: the input embedding's table quantized with the method's codec before the blocks; a
tied head untied and quantized apart (with ``quantize_head``); both loaders rebuild it bit for bit; the block
rate leaves it out; the allocation's budget counts it at its stored rate; refused before any work where it
cannot run."""

import pytest
import torch
from torch import nn

from pvq.errors import CheckpointError, QuantizeError
from pvq.models import QuantizeConfig, quantize_model
from pvq.models.allocation import embedding_bits
from pvq.models.checkpoint import cast_unquantized
from pvq.models.format import embedding_bits_per_weight, quantization_config_dict, replace_linears
from pvq.models.qlinear import MODULE_KINDS, QuantizedEmbedding, QuantizedLinear
from pvq.models.structure import head_is_tied, input_embedding
from tiny_models import calib, quantize_tables, quantized, saved_and_loaded, tiny, tiny_logits

X = calib(2, 16, seed=5)


def _run(plan="fused", tied=True, head=True, bits=3.0, **kw):
    return quantize_tables(tied, plan, bits, head, embedding=True, **kw)


@pytest.mark.parametrize("plan", ["fused", "layer"])
def test_a_tied_pair_is_untied_and_both_quantized(plan):
    ref = tiny_logits(X, tie_word_embeddings=True)
    m, report = _run(plan)
    emb = m.get_input_embeddings()
    assert isinstance(emb, QuantizedEmbedding) and isinstance(m.lm_head, QuantizedLinear)
    assert not head_is_tied(m) and m.config.tie_word_embeddings is False
    assert any("untied" in n for n in report.notes)
    assert report.embedding.name == "model.embed_tokens" and report.embedding.block == -1
    assert report.embedding.bits_per_weight == pytest.approx(embedding_bits_per_weight(m))
    assert 2.8 <= report.embedding.bits_per_weight <= 3.2
    assert report.embedding.relative_error < 0.1  # 3 bits on a Gaussian table: about 0.035
    assert set(quantized(m)) >= {"model.embed_tokens", "lm_head"}
    assert "embedding" in report.to_dict()
    with torch.no_grad():
        err = ((m(X).logits - ref).norm() / ref.norm()).item()
    assert err < 0.4
    assert emb.rotation is not None and emb.rotation.out_seed is None  # its own input side only


def test_lookups_are_rows_of_the_decoded_table():
    m, _ = _run("layer")
    emb = m.get_input_embeddings()
    emb.clear_cache()
    table = emb.dequantize(emb.table_dtype)
    ids = torch.tensor([[0, 5, 127], [3, 3, 64]])
    assert torch.equal(emb(ids), table[ids])
    assert emb.table() is emb.table()  # decoded once, kept
    with pytest.raises(QuantizeError, match="integer token ids"):
        emb(ids.float())


def test_an_untied_model_quantizes_its_embedding_alone():
    m, report = _run(tied=False, head=False)
    assert isinstance(m.get_input_embeddings(), QuantizedEmbedding)
    assert type(m.lm_head) is nn.Linear and report.head is None and report.embedding is not None


@pytest.mark.parametrize("via", ["direct", "transformers"])
def test_saved_embedding_loads_to_the_same_logits(tmp_path, via):
    m, report = _run(bits=3.0)
    want, loaded, got = saved_and_loaded(m, report, tmp_path / "q", via, X)
    assert isinstance(loaded.get_input_embeddings(), QuantizedEmbedding) and not loaded.config.tie_word_embeddings
    assert quantization_config_dict(loaded, report)["modules"]["model.embed_tokens"]["kind"] == "embedding"
    assert torch.equal(got, want)


def test_the_model_dtype_reaches_the_lookups():
    m, _ = _run()
    cast_unquantized(m, torch.bfloat16)
    assert m.get_input_embeddings()(X).dtype == torch.bfloat16


def test_refused_before_any_work():
    tied = tiny("llama", tie_word_embeddings=True)
    alone = QuantizeConfig(method="pvq", bits=3, quantize_embedding=True, n_samples=8, seq_len=32)
    with pytest.raises(QuantizeError, match="add --quantize-head"):
        quantize_model(tied, calib(), alone, progress=False, log=None)
    head_only = QuantizeConfig(method="pvq", bits=3, quantize_head=True, n_samples=8, seq_len=32)
    with pytest.raises(QuantizeError, match="add --quantize-embedding"):
        quantize_model(tied, calib(), head_only, progress=False, log=None)
    assert not quantized(tied) and head_is_tied(tied)

    class Scaled(nn.Embedding):  # a forward that does more than a lookup (Gemma scales its rows)
        def forward(self, ids):
            return super().forward(ids) * 2.0

    untied = tiny("llama", tie_word_embeddings=False)
    old = untied.get_input_embeddings()
    untied.set_input_embeddings(Scaled(old.num_embeddings, old.embedding_dim))
    with pytest.raises(QuantizeError, match="not a plain nn.Embedding"):
        input_embedding(untied)
    with pytest.raises(QuantizeError, match="not a plain nn.Embedding"):
        quantize_model(untied, calib(), alone, progress=False, log=None)
    assert not quantized(untied)
    with pytest.raises(QuantizeError, match="quantize_embedding must be True or False"):
        QuantizeConfig(method="pvq", bits=3, quantize_embedding="yes")


def test_loader_checks_the_module_kind():
    m, report = _run()
    qdict = quantization_config_dict(m, report)
    assert set(MODULE_KINDS) == {"linear", "embedding"}
    fresh = tiny("llama", tie_word_embeddings=False)
    wrong = {"modules": {"model.embed_tokens": {**qdict["modules"]["model.embed_tokens"], "kind": "conv"}}}
    with pytest.raises(CheckpointError, match="kind 'conv'"):
        replace_linears(fresh, wrong)
    as_linear = {"modules": {"lm_head": {**qdict["modules"]["lm_head"], "kind": "embedding"}}}
    with pytest.raises(CheckpointError, match="expected the nn.Embedding"):
        replace_linears(fresh, as_linear)


def test_allocation_budget_counts_a_quantized_embedding_at_its_rate():
    m, _ = _run(tied=False, head=False)
    emb, head = m.get_input_embeddings(), m.get_output_embeddings()
    rate = embedding_bits_per_weight(m)
    n, bits = embedding_bits(m, 16, None, rate)
    assert n == emb.num_weights + head.weight.numel()
    assert bits == int(-(-emb.num_weights * rate // 1)) + 16 * head.weight.numel()


def test_the_allocation_sizes_the_tables_with_the_layers():
    from pvq.models.allocation import AllocateConfig

    alloc = AllocateConfig(metric="fisher", count_embeddings=True, rows=0.5, size_tables=True)
    m, report = _run(bits=2.5, allocation=alloc)
    rec = report.allocation
    assert {"model.embed_tokens", "lm_head"} <= set(rec["layers"]) and rec["embedding_weights"] == 0
    assert report.embedding.bits_per_weight == pytest.approx(rec["layers"]["model.embed_tokens"]["bits_per_weight"])
    assert report.head.bits_per_weight == pytest.approx(rec["layers"]["lm_head"]["bits_per_weight"])
    weights = report.num_weights + report.embedding.num_weights + report.head.num_weights
    bits = report.stored_bits + report.embedding.stored_bits + report.head.stored_bits
    assert 2.4 < bits / weights <= 2.5  # the whole model's measured rate, within the budget
    fresh = tiny("llama", tie_word_embeddings=True)
    cfg = QuantizeConfig(method="pvq", bits=3, quantize_head=True, quantize_embedding=True, n_samples=8, seq_len=32)
    with pytest.raises(QuantizeError, match="use fisher or proxy"):
        quantize_model(fresh, calib(), cfg, progress=False, log=None,
                       allocation=AllocateConfig(metric="block", count_embeddings=True, size_tables=True))
    assert head_is_tied(fresh) and not quantized(fresh)  # before any work
    with pytest.raises(QuantizeError, match="needs count_embeddings"):
        AllocateConfig(size_tables=True)
    m, report = _run(bits=2.5, allocation=AllocateConfig(metric="proxy", count_embeddings=True, rows=0.5))
    assert "lm_head" not in report.allocation["layers"]  # off: the tables take --bits, counted at its rate
    assert report.embedding.bits_per_weight == pytest.approx(report.head.bits_per_weight)
    assert report.allocation["embedding_weights"] == report.embedding.num_weights + report.head.num_weights


def test_row_lookups_equal_the_table_and_keep_less():
    m, _ = _run("layer")
    emb = m.get_input_embeddings()
    ids = torch.tensor([[0, 5, 127, 5], [3, 3, 64, 0]])
    emb.set_lookup("table")
    want, table_bytes = emb(ids), emb.cached_bytes()
    emb.set_lookup("rows")
    assert emb.cached_bytes() == 0
    torch.testing.assert_close(emb(ids), want, rtol=1e-6, atol=1e-7)
    assert 0 < emb.cached_bytes() < table_bytes / 4  # unpacked codes in narrow dtypes against a float32 table
    with torch.no_grad():
        logits = m(X).logits
    emb.set_lookup("table")
    with torch.no_grad():
        torch.testing.assert_close(m(X).logits, logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(QuantizeError, match="lookup must be one of"):
        emb.set_lookup("gather")
