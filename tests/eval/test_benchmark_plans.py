"""The benchmarks' rotation-plan argument (``benchmarks/_plans.py``): one parser for ``layer``, ``fused``, ``none`` and
``fused:B``, and the seeds a layer gets under each, as generate.py and kernel_speed.py build their layers."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("_plans", os.path.join(ROOT, "benchmarks", "_plans.py"))
plans = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plans)


@pytest.mark.parametrize("text, want", [
    ("fused", ("fused", None)), ("layer", ("layer", None)), ("none", ("none", None)), ("fused:256", ("fused", 256)),
    ("fused:1", None), ("layer:256", None), ("fused:x", None), ("fused:", None), ("both", None),
])
def test_parse_plan(text, want):
    assert plans.parse_plan(text) == want


def test_parse_plan_within_the_plans_a_benchmark_takes():
    assert plans.parse_plan("none", ("layer", "fused")) is None
    assert plans.parse_plan("fused:24", ("layer", "fused")) == ("fused", 24)


def test_online_rotation_seeds():
    assert plans.online_rotation_seeds("layer", False, 10) == {"out_seed": 10, "in_seed": 11}
    assert plans.online_rotation_seeds("fused", False, 10) is None  # the stream rotation covers its input
    assert plans.online_rotation_seeds("fused", True, 10) == {"out_seed": None, "in_seed": 11}
    assert plans.online_rotation_seeds("fused:256", True, 10) == {"out_seed": None, "in_seed": 11, "in_block": 256}
    assert plans.online_rotation_seeds("none", True, 10) is None


@pytest.mark.parametrize("codec, bits, width, want", [
    ("pvq", 3.0, 11008, "fused:256"), ("pvq", 4.0, 11008, "fused:256"), ("pvq", 2.0, 11008, "layer"),
    ("e8", 2.0, 11008, "layer"), ("e8", 3.0, 11008, "layer"), ("pvq", 3.0, 4096, "fused"), ("pvq", 3.0, 1000, "fused"),
])
def test_auto_resolves_to_the_plan_pvq_quantize_picks(codec, bits, width, want):
    assert plans.resolve_plan("auto", codec, bits, width) == want
    assert plans.resolve_plan("layer", codec, bits, width) == "layer"
