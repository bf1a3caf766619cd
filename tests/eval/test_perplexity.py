"""Perplexity with the Hugging Face sliding-window definition."""

import math
from types import SimpleNamespace

import pytest
import torch

from pvq.eval import perplexity, perplexity_reference
from pvq.eval.perplexity import PerplexityError, windows
from transformers import LlamaConfig, LlamaForCausalLM


class UniformLM(torch.nn.Module):
    """Logits all equal: every token has probability 1 / vocab."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab) + self.dummy)


def tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def test_uniform_logits_give_the_vocabulary_size():
    ids = torch.randint(0, 50, (100,))
    r = perplexity(UniformLM(50), ids, context=16, stride=16, batch_size=4)
    assert r.perplexity == pytest.approx(50, rel=1e-6)
    assert r.nll == pytest.approx(math.log(50), rel=1e-6)
    assert r.tokens == 6 * 15 + 3  # windows [0,16) ... [80,96) score 15 each, [96,100) scores 3
    assert (r.context, r.stride) == (16, 16) and r.seconds >= 0


@pytest.mark.parametrize("n, context, stride", [(100, 16, 16), (100, 16, 5), (37, 8, 3), (64, 16, 16), (10, 32, 8),
                                                (50, 8, 12)])
def test_windows_score_every_token_once(n, context, stride):
    scored = []
    for start, end, first in windows(n, context, stride):
        assert 0 <= start < end <= n and end - start <= context and 1 <= first < end - start
        scored.extend(range(start + first, end))
    if stride < context:
        assert scored == list(range(1, n))  # each token but the first, once, in order
    elif stride == context:  # disjoint windows: a window's first token has no context and is not scored
        assert scored == [t for t in range(1, n) if t % stride]
    else:  # gaps between windows: tokens are still scored at most once, in order
        assert scored == sorted(set(scored)) and scored[0] == 1


@pytest.mark.parametrize("context, stride, batch", [(16, 16, 4), (16, 8, 3), (12, 5, 1)])
def test_batched_matches_the_plain_hf_loop(context, stride, batch):
    model = tiny_llama()
    ids = torch.randint(0, 128, (90,), generator=torch.Generator().manual_seed(3))
    fast = perplexity(model, ids, context=context, stride=stride, batch_size=batch)
    ref = perplexity_reference(model, ids, context=context, stride=stride)
    assert fast.perplexity == pytest.approx(ref, rel=1e-5)
    assert 50 < fast.perplexity < 400  # random init: about the vocabulary size


def test_text_with_tokenizer_and_errors():
    class Bytes:
        def encode(self, text, add_special_tokens=False):
            return list(text.encode())

    r = perplexity(UniformLM(256), "hello world, hello perplexity", Bytes(), context=8, stride=8)
    assert r.perplexity == pytest.approx(256, rel=1e-6) and r.tokens == 29 - 4
    with pytest.raises(PerplexityError, match="tokenizer"):
        perplexity(UniformLM(8), "text")
    with pytest.raises(PerplexityError, match="context"):
        perplexity(UniformLM(8), torch.arange(8), context=1)
    with pytest.raises(PerplexityError, match="at least 2 tokens"):
        perplexity(UniformLM(8), torch.tensor([1]))
    with pytest.raises(PerplexityError, match="1-D integer"):
        perplexity(UniformLM(8), torch.rand(10))


@pytest.mark.parametrize("rows, static", [(1, False), (3, False), (1, True), (3, True)])
def test_stepwise_scores_what_one_full_forward_scores(rows, static):
    from pvq.eval import perplexity_stepwise

    model = tiny_llama()
    ids = torch.randint(0, 128, (3 * 20 + 2,), generator=torch.Generator().manual_seed(5))
    r = perplexity_stepwise(model, ids, rows=rows, static=static)
    n = ids.numel() // rows
    x = ids[: n * rows].view(rows, n)
    with torch.no_grad():
        logits = model(input_ids=x).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 128), x[:, 1:].reshape(-1))
    assert r.tokens == rows * (n - 1) and (r.context, r.stride) == (n, 1)
    assert r.nll == pytest.approx(float(nll), rel=1e-5)


def test_stepwise_refuses_rows_too_short():
    from pvq.eval import perplexity_stepwise

    with pytest.raises(PerplexityError, match="at least 2 tokens a row"):
        perplexity_stepwise(tiny_llama(), torch.arange(5), rows=3)


def test_stepwise_refuses_no_rows():
    from pvq.eval import perplexity_stepwise

    with pytest.raises(PerplexityError, match="rows >= 1"):
        perplexity_stepwise(tiny_llama(), torch.arange(50), rows=0)
