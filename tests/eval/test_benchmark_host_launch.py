"""``benchmarks/host_launch.py`` on the CPU (its fp16 row: the pvq rows run Triton's interpreter, minutes): the
block's calls are timed and tabled, bad arguments are refused before any model is built, and its ``jit_launches``
puts back the package's launchers."""

import os
import sys

from benchmark_runs import ROOT, run_benchmark

SHAPES = ["--hidden", "128", "--intermediate", "256", "--vocab", "256", "--heads", "2", "--rows", "24", "--calls", "2"]


def _run(*args: str, interpret: bool = True):
    return run_benchmark("host_launch.py", [*SHAPES, *args], interpret=interpret)


def test_host_launch_fp16_row_on_the_cpu():
    run = _run("--device", "cpu", "--methods", "fp16")
    assert run.returncode == 0, run.stderr[-3000:]
    for call in ("q/k/v projections", "o_proj", "MLP (gate/up, act, down)", "whole block"):
        assert f"| fp16 | {call} | " in run.stdout, run.stdout[-2000:]


def test_host_launch_refuses_bad_arguments():
    for args, interpret, message in ((("--rows", "16", "--device", "cpu"), True, "--rows: more than 16"),
                                     (("--methods", "fp16,int4", "--device", "cpu"), True, "--methods: fp16"),
                                     (("--device", "cpu"), False, "set TRITON_INTERPRET=1")):
        bad = _run(*args, interpret=interpret)
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr[-500:])


def test_jit_launches_swaps_the_launchers_and_puts_them_back():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        from host_launch import LAUNCHERS, jit_launches
    finally:
        sys.path.pop(0)
    import importlib

    modules = {m: importlib.import_module(f"pvq.kernels.{m}") for m, _ in LAUNCHERS}
    before = {name: getattr(modules[m], name) for m, name in LAUNCHERS}
    with jit_launches(True):
        for m, name in LAUNCHERS:
            swapped = getattr(modules[m], name)
            assert swapped is not before[name] and swapped.kernel is before[name].kernel
            assert swapped._names is None  # every launch through the JIT
    assert {name: getattr(modules[m], name) for m, name in LAUNCHERS} == before
    with jit_launches(False):
        assert {name: getattr(modules[m], name) for m, name in LAUNCHERS} == before
