"""Calibration activations on the device, in CPU memory or on disk (memory-mapped) give the same
codes, bit for bit; a bad placement name is refused before any work."""

import pytest
import torch

from pvq.errors import QuantizeError
from pvq.models import QuantizeConfig, quantize_model
from pvq.models.offload import InputPlacer, OffloadedInputs

CONFIG = dict(method="gptq", bits=3, group_size=16)


def stored(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if "layers" in k}


def test_placements_give_the_same_codes(tiny_model, calib_ids, tmp_path):
    ids = calib_ids(n=6, length=16)
    out = {}
    for where in ("device", "cpu", "disk"):
        model = tiny_model("llama")
        report = quantize_model(model, ids, QuantizeConfig(**CONFIG), device="cpu", progress=False, log=None,
                                batch_size=4, activations=where, scratch=tmp_path)
        out[where] = stored(model)
        if where == "disk":
            assert any("on disk" in n for n in report.notes)
    assert not list(tmp_path.iterdir())  # the disk file is removed at the end
    for where in ("cpu", "disk"):
        assert out[where].keys() == out["device"].keys()
        assert all(torch.equal(out[where][k], out["device"][k]) for k in out["device"])


def test_disk_placement_round_trips_batches(tmp_path):
    placer = InputPlacer("disk", torch.device("cpu"), num_samples=5, scratch=tmp_path)

    class Batch:
        def __init__(self, h):
            self.hidden, self.args, self.kwargs = h, (), [{}]

    hs = [torch.randn(3, 4, 8), torch.randn(2, 4, 8)]  # a last, smaller batch
    kept = [placer(Batch(h)) for h in hs]
    assert all(isinstance(k, OffloadedInputs) for k in kept)
    assert all(torch.equal(k.hidden, h) for k, h in zip(kept, hs))
    kept[1].hidden = hs[1] * 2
    assert torch.equal(kept[1].hidden, hs[1] * 2) and torch.equal(kept[0].hidden, hs[0])
    with pytest.raises(QuantizeError, match="expected"):
        kept[0].hidden = torch.zeros(2, 4, 8)
    placer.close()
    assert not list(tmp_path.iterdir())


def test_auto_on_cpu_keeps_small_activations_in_memory():
    placer = InputPlacer("auto", torch.device("cpu"), num_samples=2)
    assert placer._choose(1024) == "device"
    assert placer._choose(1 << 62) == "disk"  # more than any machine's memory


def test_unknown_placement_is_refused(tiny_model, calib_ids):
    with pytest.raises(QuantizeError, match="activations must be one of"):
        quantize_model(tiny_model("llama"), calib_ids(n=2, length=16), QuantizeConfig(**CONFIG), device="cpu",
                       progress=False, log=None, activations="gpu")
