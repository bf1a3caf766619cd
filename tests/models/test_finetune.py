"""Block fine-tuning of codebooks and scales (``finetune_steps``, AQLM's step): codes and stored
sizes unchanged, the block's output error never higher than before tuning, refusals before work."""

import re

import pytest
import torch

import pvq  # noqa: F401  (registers the transformers quantizer)
from pvq.errors import QuantizeError
from pvq.models import QuantizeConfig, load_quantized, quantize_model, save_quantized
from tiny_models import X, calib, quantized, tiny

NOTE = re.compile(r"block (\d+) fine-tune: (\d+) Adam steps on the codebooks and scales of (\d+) linears, "
                  r"output MSE ([0-9.e+-]+) -> ([0-9.e+-]+)( \(not better: start kept\))?")


def run(method: str, steps: int, **extra):
    model = tiny("llama")
    cfg = QuantizeConfig(method=method, bits=2, finetune_steps=steps, **extra)
    report = quantize_model(model, calib(), cfg, progress=False, log=None)
    return model, report


@pytest.mark.parametrize("method, extra", [
    ("aqlm", dict(dim=8, options={"codebook_bits": 4})),
    ("gptvq", {}),
])
def test_tuning_keeps_codes_and_sizes_and_never_raises_the_block_error(method, extra, tmp_path):
    plain, plain_report = run(method, 0, **extra)
    tuned, report = run(method, 25, **extra)
    notes = [NOTE.fullmatch(n.rsplit(" (", 1)[0]) for n in report.notes if "fine-tune" in n]  # less "(1.5 s)"
    assert len(notes) == 2 and all(notes), report.notes  # one per block of the tiny model
    for m in notes:
        assert int(m.group(2)) == 25 and int(m.group(3)) == 7
        assert float(m.group(5)) <= float(m.group(4))  # rounded to what is stored, never worse
    assert any(float(m.group(5)) < float(m.group(4)) for m in notes)  # and it does help somewhere
    assert report.bits_per_weight == plain_report.bits_per_weight  # same stored sizes
    qa, qb = quantized(plain), quantized(tuned)
    name = next(n for n in qa if n.startswith("model.layers.0."))
    a, b = qa[name].stored_tensors(), qb[name].stored_tensors()  # block 0: same inputs, same codes
    assert {k: (v.shape, v.dtype) for k, v in a.items()} == {k: (v.shape, v.dtype) for k, v in b.items()}
    assert torch.equal(a["index"], b["index"])
    assert any(not torch.equal(a[k], b[k]) for k in a if k != "index")  # codebooks or scales moved
    path = save_quantized(tuned, tmp_path / "ck", report)
    with torch.no_grad():
        assert torch.equal(tuned(input_ids=X).logits, load_quantized(path)(input_ids=X).logits)


def test_refused_before_any_work_without_a_codebook():
    with pytest.raises(QuantizeError, match="no codebook to tune: use aqlm or gptvq"):
        run("pvq", 5)
    with pytest.raises(QuantizeError, match="finetune_steps must be an integer >= 0"):
        QuantizeConfig(method="aqlm", bits=2, finetune_steps=-1)
    with pytest.raises(QuantizeError, match="drop one of --finetune-steps and --act-bits"):
        QuantizeConfig(method="aqlm", bits=2, finetune_steps=3, act_bits=8)
    with pytest.raises(QuantizeError, match="finetune_lr must be a finite number > 0"):
        QuantizeConfig(method="aqlm", bits=2, finetune_steps=3, finetune_lr=0)
