"""The cold-weights timing of the benchmarks (``benchmarks/_cold.py``): the ring's length, copies with new storage and
the same values, the ring called in turn and its time divided by its length."""

import importlib.util
import os

import pytest
import torch

from pvq.kernels.leaf_rows import leaf_rows_decode_reference, leaf_rows_from_split

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("_cold", os.path.join(ROOT, "benchmarks", "_cold.py"))
cold = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cold)


@pytest.mark.parametrize("nbytes, l2, factor, want", [
    (33_554_432, 52_428_800, 3.0, 6),  # 4096x4096 fp16 on a 50 MB L2: 5 others read 168 MB >= 157 MB
    (90_177_536, 52_428_800, 3.0, 3),  # 11008x4096 fp16: 2 others read 180 MB
    (100, 100, 3.0, 4), (101, 100, 3.0, 4), (99, 100, 3.0, 5), (300, 100, 1.0, 2),
])
def test_ring_length(nbytes, l2, factor, want):
    n = cold.ring_length(nbytes, l2, factor)
    assert n == want
    assert (n - 1) * nbytes >= factor * l2 > (n - 2) * nbytes  # the shortest ring that reads factor x L2 between


@pytest.mark.parametrize("args", [(0, 100, 3.0), (100, 0, 3.0), (100, 100, 0.0), (1, 100, 3.0)])
def test_ring_length_refuses(args):
    with pytest.raises(ValueError):
        cold.ring_length(*args)


@pytest.mark.parametrize("whole_points", [False, True])
def test_weight_copy_of_a_runtime_clones_its_tensors_but_the_shared(whole_points):
    speed = _speed_module()
    srt = speed.random_split_runtime(2.0 if whole_points else 3.0, 16, 160, 2048, seed=3, device=torch.device("cpu"))
    rt = leaf_rows_from_split(srt, whole_points=whole_points)
    for shared in ((), ("leaves",)):
        copy = cold.weight_copy(rt, shared)
        assert copy.words.data_ptr() != rt.words.data_ptr() and torch.equal(copy.words, rt.words)
        assert copy.row_scales.data_ptr() != rt.row_scales.data_ptr() and torch.equal(copy.row_scales, rt.row_scales)
        assert (copy.leaves is rt.leaves) == bool(shared) and torch.equal(copy.leaves, rt.leaves)
        assert copy.steps == rt.steps and copy.whole_points == whole_points
        assert torch.equal(leaf_rows_decode_reference(copy), leaf_rows_decode_reference(rt))
        tensors = [rt.words, rt.row_scales, rt.inverse_norms, rt.scales, rt.levels, rt.counts]
        tensors += [] if shared else [rt.leaves]
        assert cold.weight_bytes(rt, shared) == sum(t.numel() * t.element_size() for t in tensors)
    with pytest.raises(ValueError, match="no fields"):
        cold.weight_copy(rt, ("table",))


def test_weight_copy_of_a_tensor_and_refusal_of_other_things():
    w = torch.randn(5, 7)
    c = cold.weight_copy(w)
    assert c.data_ptr() != w.data_ptr() and torch.equal(c, w) and cold.weight_bytes(w) == 140
    with pytest.raises(TypeError):
        cold.weight_copy([w])


def test_cold_bench_calls_each_copy_in_turn_and_divides_by_the_ring():
    made, called = [], []

    def make():
        made.append(torch.zeros(1))
        return made[-1]

    def bench(fn):  # a fake timer: two replays, each "costing" 10 a call
        fn()
        fn()
        return 10.0 * len(called)

    t = cold.cold_bench(bench, make, lambda c: called.append(id(c)), nbytes=40, l2_bytes=100, factor=1.0)
    assert len(made) == 4  # 1 + ceil(100 / 40)
    assert called == [id(m) for m in made] * 2  # each copy once a replay, in order
    assert t == 10.0 * 8 / 4


def _speed_module():
    import sys

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    spec = importlib.util.spec_from_file_location("speed_layout_device",
                                                  os.path.join(ROOT, "benchmarks", "speed_layout_device.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_speed_benchmark_refuses_a_negative_cold_factor_before_building():
    """benchmarks/speed_layout_device.py --cold -1: exit 2, one line naming what to pass, no build or GPU asked for."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "benchmarks/speed_layout_device.py", "--cold", "-1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "--cold takes" in run.stderr.strip().splitlines()[-1], run.stderr[-500:]
