"""Methods ``lattice`` and ``trellis`` through the driver, the checkpoint and reload (tiny Llama)."""

import pytest
import torch

import pvq  # noqa: F401  (registers the transformers quantizer)
from pvq.cli import main
from pvq.models import QuantizeConfig, load_quantized, quantize_model, save_quantized
from tiny_models import X, calib, quantized, tiny


@pytest.mark.parametrize("method, bits, options, rate, max_rel", [
    ("lattice", 3, {"lattice": "e8"}, (3.0, 3.2), 0.2),
    ("lattice", 2, {"lattice": "dn"}, (1.8, 2.3), 0.2),  # the nearest q: its rate may fall below the target
    # D per layer: sequences of 64 weights on the 64-column layers (the fp16 scale costs 0.25 bits per
    # weight, k = round(1.75) = 2: 2.25 b/w), of 16 on the 176-column ones (k = 1: 2.0 b/w); measured 2.189
    ("trellis", 2, {"state_bits": 8, "code": "3inst"}, (2.15, 2.25), 0.42),
    ("ecsq", 3, {}, (2.9, 3.01), 0.2),  # the coded rate (stream, symbol model and scales), met per layer
])
def test_method_quantizes_saves_and_reloads(method, bits, options, rate, max_rel, tmp_path):
    model = tiny("llama")
    report = quantize_model(model, calib(), QuantizeConfig(method=method, bits=bits, options=options),
                            progress=False, log=None)
    q = quantized(model)
    assert len(q) == 14 and all(m.codec.name == method for m in q.values())
    # any rotating plan rotates down_proj's input; ecsq does not rotate
    assert all((m.rotation is not None) == (method != "ecsq") for n, m in q.items() if n.endswith("down_proj"))
    assert rate[0] <= report.bits_per_weight <= rate[1]  # measured from the stored bytes
    assert all(s.relative_error < max_rel for s in report.layers)
    path = save_quantized(model, tmp_path / method, report)
    loaded = load_quantized(path)
    with torch.no_grad():
        assert torch.equal(model(input_ids=X).logits, loaded(input_ids=X).logits)


def test_codec_options_are_cli_flags(capsys):
    with pytest.raises(SystemExit) as exit_:  # argparse checks the option's choices
        main(["quantize", "--method", "lattice", "--lattice", "hexagonal"])
    assert exit_.value.code == 2 and "invalid choice: 'hexagonal'" in capsys.readouterr().err
    assert main(["quantize", "--method", "gptq", "--state-bits", "8"]) == 2
    assert "state_bits=8 does not apply to method 'gptq'" in capsys.readouterr().err
