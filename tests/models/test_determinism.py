"""The same command and seed write the same bytes whatever the thread count (issue 28).

The reference model's first block is quantized with pvq at 2 bits with 1 and with 2 torch
threads; the Hessians its layers are solved under and every stored tensor of the block must
be equal bit for bit. The calibration windows are long (4 x 1,024 tokens in one batch) so that
a Hessian product runs over 4,096 tokens, where a BLAS would split the tokens across threads.
"""

from __future__ import annotations

import pytest
import torch

import pvq.models.driver as driver
from pvq.eval.runs import load_model
from pvq.models import QuantizeConfig, calibration_batches, load_text, quantize_model
from pvq.models.reference import CALIB_TEXT


@pytest.fixture(scope="module")
def reference():
    model, tokenizer = load_model(None)
    calib = calibration_batches(load_text(CALIB_TEXT), tokenizer, 4, 1024, 0)
    return {k: v.clone() for k, v in model.state_dict().items()}, calib


def _first_block(reference, threads: int, monkeypatch) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """(Hessians the block's layers were solved under, the block's tensors) with ``threads`` threads."""
    state, calib = reference
    hessians = []
    solve = driver.quantize_linear

    def recording(w, h, *args, **kwargs):
        hessians.append(h.clone())
        return solve(w, h, *args, **kwargs)

    monkeypatch.setattr(driver, "quantize_linear", recording)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        model, _ = load_model(None)
        model.load_state_dict(state)
        config = QuantizeConfig(method="pvq", bits=2, n_samples=4, seq_len=1024, seed=0)
        quantize_model(model, calib, config, device="cpu", progress=False, log=None, blocks=[0])
    finally:
        torch.set_num_threads(before)
        monkeypatch.undo()
    block = {k: v for k, v in model.state_dict().items() if k.startswith("model.layers.0.")}
    return hessians, block


def test_first_block_same_bytes_with_one_and_two_threads(reference, monkeypatch):
    h1, b1 = _first_block(reference, 1, monkeypatch)
    h2, b2 = _first_block(reference, 2, monkeypatch)
    assert len(h1) == len(h2) == 7
    assert [i for i, (a, b) in enumerate(zip(h1, h2)) if not torch.equal(a, b)] == []
    assert any(k.endswith("packed_codes") for k in b1)
    assert b1.keys() == b2.keys()
    assert [k for k in b1 if not torch.equal(b1[k], b2[k])] == []
