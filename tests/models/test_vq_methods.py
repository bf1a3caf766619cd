"""Methods ``aqlm``, ``gptvq``, ``vptq`` and gptq's act-order through the driver, checkpoint and reload."""

import pytest
import torch

import pvq  # noqa: F401  (registers the transformers quantizer)
from pvq.errors import QuantizeError
from pvq.models import QuantizeConfig, load_quantized, quantize_model, save_quantized
from tiny_models import X, calib, quantized, tiny
from transformers import AutoModelForCausalLM


@pytest.mark.parametrize("method, bits, extra, keys", [
    ("aqlm", 2, dict(dim=8, options={"codebook_bits": 4}), {"index", "codebooks", "scale"}),
    ("gptvq", 2, {}, {"index", "codebook", "codebook_scale", "scale"}),
    ("vptq", 2, dict(dim=4), {"index", "residual", "codebook", "residual_codebook", "scale"}),
    ("gptq", 2, dict(act_order=True), {"q", "zero", "scale"}),
])
def test_method_quantizes_saves_and_reloads(method, bits, extra, keys, tmp_path):
    model = tiny("llama")
    report = quantize_model(model, calib(), QuantizeConfig(method=method, bits=bits, **extra), progress=False, log=None)
    q = quantized(model)
    assert len(q) == 14
    for m in q.values():
        t = m.stored_tensors()
        assert set(t) == keys
        assert m.stored_bits() == sum(v.numel() * v.element_size() * 8 for v in t.values())  # codebooks counted
    assert all(s.relative_error < 0.5 for s in report.layers)
    path = save_quantized(model, tmp_path / method, report)
    with torch.no_grad():
        want = model(input_ids=X).logits
        assert torch.equal(want, load_quantized(path)(input_ids=X).logits)
        assert torch.equal(want, AutoModelForCausalLM.from_pretrained(path)(input_ids=X).logits)


def test_act_order_needs_error_feedback():
    with pytest.raises(QuantizeError, match="act_order"):
        QuantizeConfig(method="rtn", act_order=True)


@pytest.mark.parametrize("method, bits, dims", [
    ("vptq", 2, {384: 6, 1032: 6}),  # the method's D where it divides, before any power of two
    ("vptq", 3, {384: 3, 1032: 3}),  # max_vector_bits halves 6 to 3 at 3 and 4 bits
    ("vptq", 4, {384: 3, 1032: 3}),
    ("pvq", 3, {384: 32, 1032: 8}),  # 1032 = 8 x 129: the largest power of two below 32, not 24 or 12
    ("gptvq", 2, {384: 4, 1032: 4}),
    # a trellis tile of 8 (a power of two far below 256) fell to k = 2 at 4 bits (perplexity 19.3 on
    # an H200, session 10): the largest divisor instead
    ("trellis", 4, {384: 128, 1032: 172}),
    ("trellis", 2, {384: 128, 1032: 172}),
])
def test_layer_plan_dims_on_the_reference_model_sizes(method, bits, dims):
    from pvq.models.plan import pick_dims

    assert pick_dims(QuantizeConfig(method=method, bits=bits), list(dims)) == dims
