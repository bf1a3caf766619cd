"""The static-cache decode path (pvq.eval.decoding) against model.generate: the same greedy tokens on the
reference model (through ``pvq generate --decode static``) and on tiny random models, batch rows included.
The CUDA-graph capture runs on CUDA machines only; here its refusal off CUDA is checked."""

import shutil

import pytest
import torch

from pvq.eval import runs
from pvq.eval.decoding import DecodeError, StaticDecoder, decode, greedy, sampler
from pvq.eval.generate import GenerateConfig, GenerateError, generate


@pytest.fixture(scope="module")
def reference():
    return runs.load_model(None)


def _eager(model, ids, n):
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=0)
    return out[:, ids.shape[1]:]


def test_reference_model_greedy_tokens_equal_the_eager_path(reference):
    model, tokenizer = reference
    prompt = "import os\nimport "
    eager = generate(model, tokenizer, prompt, GenerateConfig(max_new_tokens=24, decode="eager"))
    static = generate(model, tokenizer, prompt, GenerateConfig(max_new_tokens=24, decode="static"))
    assert static["completion"] == eager["completion"] and static["new_tokens"] == eager["new_tokens"]
    assert static["decode"] == "static" and static["mode"] == "static" and static["tokens_per_second"] > 0
    assert generate(model, tokenizer, prompt, GenerateConfig(max_new_tokens=4))["decode"] == "eager"  # auto on CPU


def test_reference_model_sampling_equals_the_eager_path(reference):
    model, tokenizer = reference
    for cfg in (dict(temperature=1.3), dict(top_k=20, top_p=0.9, temperature=0.8)):
        a = generate(model, tokenizer, "def ", GenerateConfig(max_new_tokens=16, sample=True, seed=5, decode="eager", **cfg))
        b = generate(model, tokenizer, "def ", GenerateConfig(max_new_tokens=16, sample=True, seed=5, decode="static",
                                                               **cfg))
        assert a["completion"] == b["completion"]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_tiny_model_rows_equal_the_eager_path(tiny_model, family):
    model = tiny_model(family, seed=3).eval()
    ids = torch.randint(0, model.config.vocab_size, (3, 7), generator=torch.Generator().manual_seed(1))
    dec = StaticDecoder(model, batch=3, max_len=7 + 20)
    run = decode(dec, ids, 20)
    assert run.mode == "static" and run.tokens.shape == (3, 20)
    assert torch.equal(run.tokens, _eager(model, ids, 20))
    again = decode(dec, ids, 20)  # the same cache again: positions restart, stale keys are masked
    assert torch.equal(again.tokens, run.tokens)


def test_a_failed_capture_falls_back_to_eager_steps_and_says_why(tiny_model, monkeypatch):
    model = tiny_model("llama", seed=3).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(4))
    dec = StaticDecoder(model, batch=2, max_len=20)
    dec.want_graph = True  # as on a CUDA device; the capture's first CUDA call fails here

    def refuse(*_, **__):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "Stream", refuse)
    run = decode(dec, ids, 8)
    assert run.mode == "static (graph capture failed: RuntimeError: operation not permitted when stream is capturing)"
    assert not dec.captured and torch.equal(run.tokens, _eager(model, ids, 8))


def test_end_of_sequence_stops_rows_as_generate_does(tiny_model):
    model = tiny_model("llama", seed=3).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 5), generator=torch.Generator().manual_seed(2))
    free = decode(StaticDecoder(model, 1, 30), ids, 12).tokens[0]
    eos = int(free[4])  # pretend the fifth token ends the sequence
    run = decode(StaticDecoder(model, 1, 30), ids, 12, eos=eos)
    first = next(i for i, t in enumerate(free.tolist()) if t == eos)
    assert run.tokens[0].tolist() == free[: first + 1].tolist()


def test_bad_requests():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(DecodeError, match="CUDA"):
        StaticDecoder(model, 1, 8, graph=True)
    with pytest.raises(GenerateError, match="--decode"):
        GenerateConfig(decode="fast").check()
    with pytest.raises(GenerateError, match="drop --decode eager"):
        GenerateConfig(decode="eager", compile=True).check()
    assert greedy(torch.tensor([[0.0, 2.0, 1.0]])).tolist() == [1]
    g = torch.Generator().manual_seed(0)
    assert sampler(top_k=1, generator=g)(torch.tensor([[0.0, 2.0, 1.0]])).tolist() == [1]


def test_decode_refuses_more_tokens_than_the_cache_holds(tiny_model):
    model = tiny_model("llama", seed=3).eval()
    dec = StaticDecoder(model, 1, 10)
    with pytest.raises(DecodeError, match="exceed"):
        decode(dec, torch.zeros(1, 6, dtype=torch.long), 5)


@pytest.fixture(scope="module")
def quantized_tiny():
    """A tiny Llama quantized at 3 bits under the fused plan, its products merged and its MLPs routed."""
    from pvq.models import QuantizeConfig, quantize_model
    from pvq.models.merging import fuse_for_decoding
    from tiny_models import calib, tiny

    model = tiny("llama", seed=3).eval()
    quantize_model(model, calib(4, 16), QuantizeConfig("pvq", bits=3, dim=8, rotation="fused", n_samples=4,
                                                       seq_len=16), device="cpu", progress=False, log=None)
    fuse_for_decoding(model)
    return model


def test_a_compiled_step_gives_the_eager_tokens(quantized_tiny):
    ids = torch.randint(0, quantized_tiny.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(8))
    want = decode(StaticDecoder(quantized_tiny, 2, 30), ids, 12).tokens
    torch._dynamo.reset()
    dec = StaticDecoder(quantized_tiny, 2, 30, compile=True, compile_backend="aot_eager")
    assert dec.needs_setup
    run = decode(dec, ids, 12)
    assert run.mode == "static, compiled" and not dec.needs_setup and run.setup_seconds > 0
    assert torch.equal(run.tokens, want)
    assert torch.equal(decode(dec, ids, 12).tokens, want)  # the compiled step again, no new set-up


def test_a_failed_compile_keeps_the_eager_step_and_says_why(quantized_tiny, monkeypatch):
    ids = torch.randint(0, quantized_tiny.config.vocab_size, (1, 5), generator=torch.Generator().manual_seed(9))
    want = decode(StaticDecoder(quantized_tiny, 1, 20), ids, 6).tokens

    def refuse(*_, **__):
        raise RuntimeError("backend 'inductor' failed\nmore lines")

    monkeypatch.setattr(torch, "compile", refuse)
    run = decode(StaticDecoder(quantized_tiny, 1, 20, compile=True), ids, 6)
    assert run.mode == "static (compile failed: RuntimeError: backend 'inductor' failed)"
    assert torch.equal(run.tokens, want)


def test_compile_options_reach_the_compiler(quantized_tiny, monkeypatch):
    """``compile_options`` go to ``torch.compile`` as its ``options`` (e.g. inductor's ``triton.enable_pdl``); none
    given, none passed; an option inductor does not know fails the compilation, which says so and steps eagerly."""
    ids = torch.randint(0, quantized_tiny.config.vocab_size, (1, 5), generator=torch.Generator().manual_seed(9))
    seen = []
    compile_ = torch.compile

    def spy(fn, **kw):
        seen.append(kw.get("options"))
        return compile_(fn, **{**kw, "backend": "aot_eager", "options": None})

    monkeypatch.setattr(torch, "compile", spy)
    decode(StaticDecoder(quantized_tiny, 1, 20, compile=True, compile_options={"triton.enable_pdl": True}), ids, 2)
    decode(StaticDecoder(quantized_tiny, 1, 20, compile=True), ids, 2)
    assert seen == [{"triton.enable_pdl": True}, None]
    monkeypatch.setattr(torch, "compile", compile_)
    run = decode(StaticDecoder(quantized_tiny, 1, 20, compile=True, compile_options={"triton.no_such_option": 1}),
                 ids, 2)
    assert run.mode.startswith("static (compile failed: RuntimeError: Unexpected optimization option triton.no_such")


def test_the_default_compile_options_ask_for_programmatic_launches_on_hopper_only(monkeypatch):
    """Inductor's ``triton.enable_pdl`` (and with it pvq's programmatic launches: compile_ops) by default on CUDA
    devices of compute capability 9 and more, for inductor only; nothing on the CPU or older GPUs."""
    from pvq.eval.decoding import default_compile_options

    assert default_compile_options(torch.device("cpu")) == {}
    for major, want in ((8, {}), (9, {"triton.enable_pdl": True}), (10, {"triton.enable_pdl": True})):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, m=major: (m, 0))
        assert default_compile_options(torch.device("cuda", 0)) == want
        assert default_compile_options(torch.device("cuda", 0), "aot_eager") == {}


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="inductor's CPU code needs a C++ compiler")
def test_the_default_compiler_gives_the_eager_tokens(reference):
    model, tokenizer = reference
    prompt = "def main():\n    "
    eager = generate(model, tokenizer, prompt, GenerateConfig(max_new_tokens=12, decode="eager"))
    torch._dynamo.reset()
    compiled = generate(model, tokenizer, prompt, GenerateConfig(max_new_tokens=12, compile=True))
    assert compiled["decode"] == "static" and compiled["mode"] == "static, compiled"
    assert compiled["completion"] == eager["completion"]


def test_each_decoder_compiles_its_own_step(tiny_model):
    # Dynamo keeps at most recompile_limit graphs per code object: the decoders of models of other shapes must not
    # share one (with a shared code object the second of these fails at limit 1: "FailOnRecompileLimitHit")
    ids = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(9))
    with torch._dynamo.config.patch(recompile_limit=1):
        for layers in (1, 2, 3):
            model = tiny_model("llama", seed=3, num_hidden_layers=layers).eval()
            want = decode(StaticDecoder(model, 1, 20), ids, 6).tokens
            run = decode(StaticDecoder(model, 1, 20, compile=True, compile_backend="aot_eager"), ids, 6)
            assert run.mode == "static, compiled" and torch.equal(run.tokens, want)


@pytest.mark.parametrize("bucket, prompt", [(4, 7), (16, 5), (64, 9), (1, 6)])
def test_padded_prefill_gives_the_eager_tokens(tiny_model, bucket, prompt):
    """Prompts padded after their end (to a multiple of the bucket, at most the cache's length) continue as the
    unpadded ones: causal attention keeps the padding from the prompt, and the steps overwrite its cache entries."""
    model = tiny_model("llama", seed=3).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, prompt), generator=torch.Generator().manual_seed(bucket))
    dec = StaticDecoder(model, batch=2, max_len=prompt + 12, prefill_bucket=bucket)
    assert dec.padded_length(prompt) == min(-(-prompt // bucket) * bucket, prompt + 12) >= prompt
    run = decode(dec, ids, 12)
    assert run.prefill_mode == f"eager (padded to multiples of {bucket})"
    assert torch.equal(run.tokens, _eager(model, ids, 12))
    unpadded = StaticDecoder(model, batch=2, max_len=prompt + 12)
    assert torch.allclose(dec.prefill(ids), unpadded.prefill(ids), atol=1e-4, rtol=1e-4)


def test_padded_prefill_without_logits_to_keep_takes_the_position_from_all_logits(tiny_model):
    model = tiny_model("llama", seed=3).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(8))
    keeps = StaticDecoder(model, batch=1, max_len=20, prefill_bucket=8)
    every = StaticDecoder(model, batch=1, max_len=20, prefill_bucket=8)
    every._keeps_logits = False  # a model whose forward has no logits_to_keep
    assert keeps._keeps_logits
    assert torch.allclose(keeps.prefill(ids), every.prefill(ids), atol=1e-5, rtol=1e-5)


def test_a_failed_prefill_capture_runs_that_length_eagerly_and_says_why(tiny_model, monkeypatch):
    model = tiny_model("llama", seed=3).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(4))
    dec = StaticDecoder(model, batch=1, max_len=20, prefill_bucket=8)
    dec.want_graph = True  # as on a CUDA device; the capture's first CUDA call fails here

    def refuse(*_, **__):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "Stream", refuse)
    run = decode(dec, ids, 6)
    assert run.prefill_mode == ("eager (prefill graph capture failed: RuntimeError: operation not permitted when "
                                "stream is capturing)")
    assert dec._prefill_graphs == {8: None} and torch.equal(run.tokens, _eager(model, ids, 6))


def test_prefill_bucket_must_be_positive(tiny_model):
    with pytest.raises(DecodeError, match="give 1 or more"):
        StaticDecoder(tiny_model("llama", seed=3).eval(), 1, 8, prefill_bucket=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_prefill_replayed_from_graphs_equals_the_padded_eager_prefill(tiny_model):
    """On CUDA: each padded length captured once (two lengths here, the second prompt of the first length replayed),
    each replay bit for bit the one before, its logits the eager padded forward's to float32 rounding (session 33, an
    H100: they differed by at most 1.04e-7 of logits about 0.3, the eager forward from the unpadded one by 8.9e-8),
    its tokens the eager path's."""
    model = tiny_model("llama", seed=3).eval().cuda()
    gen = torch.Generator().manual_seed(6)
    graphed = StaticDecoder(model, batch=1, max_len=40, prefill_bucket=8)
    eager = StaticDecoder(model, batch=1, max_len=40, prefill_bucket=8, graph=False)
    for prompt in (5, 7, 13):
        ids = torch.randint(0, model.config.vocab_size, (1, prompt), generator=gen).cuda()
        replayed = graphed.prefill(ids)
        assert torch.equal(graphed.prefill(ids), replayed)
        torch.testing.assert_close(replayed, eager.prefill(ids), rtol=0, atol=1e-6)
        assert graphed.prefill_mode == "cuda-graph (padded to multiples of 8)"
        assert torch.equal(decode(graphed, ids, 10).tokens.cpu(), _eager(model, ids, 10).cpu())
    assert sorted(graphed._prefill_graphs) == [8, 16] and all(graphed._prefill_graphs.values())
