"""The compiled decode step through the kernel backend: a tiny Llama quantized at 3 bits under the fused plan,
merged and routed as ``pvq generate`` runs it, its step compiled by inductor. Everywhere: the Triton backend
(on the CPU, its interpreter) inside the compiled graph gives the uncompiled step's tokens. On CUDA machines: the
compiled step captured in a CUDA graph against the same step uncompiled (graph too), logits to fp16 rounding."""

import pytest
import torch

from pvq.eval.decoding import StaticDecoder, decode
from pvq.kernels.availability import triton_runs_on
from pvq.models import QuantizeConfig, quantize_model
from pvq.models.merging import fuse_for_decoding
from pvq.models.qlinear import set_backend
from tiny_models import calib, quantized, tiny

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _quantized(**shape):
    model = tiny("llama", seed=3, **shape).eval()
    quantize_model(model, calib(4, 16), QuantizeConfig("pvq", bits=3, dim=8, rotation="fused", n_samples=4,
                                                       seq_len=16), device="cpu", progress=False, log=None)
    fuse_for_decoding(model)
    return model


@pytest.mark.skipif(not triton_runs_on(torch.device("cpu")), reason="needs Triton's interpreter")
def test_the_triton_backend_runs_inside_the_compiled_step():
    model = _quantized()  # the smallest shapes: the interpreter runs every kernel instance in Python
    set_backend(model, "triton")  # on the CPU only by name: its interpreter
    ids = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(3))
    want = decode(StaticDecoder(model, 1, 8), ids, 2).tokens
    assert {q.backend for q in quantized(model).values()} == {"triton"}
    run = decode(StaticDecoder(model, 1, 8, compile=True, compile_backend="aot_eager", warmup=1), ids, 2)
    assert run.mode == "static, compiled" and torch.equal(run.tokens, want)


@pytest.fixture(scope="module")
def model_on_gpu():
    return _quantized(hidden_size=256, intermediate_size=768, num_attention_heads=4, num_key_value_heads=2,
                      vocab_size=512).to("cuda", torch.float16)


@needs_cuda
def test_compiled_and_captured_step_matches_the_uncompiled_one(model_on_gpu):
    ids = torch.randint(0, 512, (2, 7), generator=torch.Generator().manual_seed(3)).cuda()
    plain = StaticDecoder(model_on_gpu, 2, 40)
    compiled = StaticDecoder(model_on_gpu, 2, 40, compile=True)
    for dec in (plain, compiled):
        dec.capture(ids)
    assert plain.mode == "cuda-graph" and compiled.mode == "cuda-graph, compiled"
    assert {q.backend for q in quantized(model_on_gpu).values() if type(q).__name__ == "QuantizedLinear"} == {"triton"}
    tok = plain.prefill(ids).argmax(-1)
    assert torch.equal(compiled.prefill(ids).argmax(-1), tok)
    for _ in range(6):  # the same tokens into both: their logits, step by step
        want, got = plain.step(tok), compiled.step(tok)
        torch.testing.assert_close(got, want, rtol=0, atol=2e-2 * float(want.abs().max()))
        tok = want.argmax(-1)

