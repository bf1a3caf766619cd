"""``benchmarks/host_overhead.py`` on the CPU: a row per bit width with the layer's kernel family and rotations, and
fewer rows than the whole-layer decode's path refused before any model is built."""

import re

from benchmark_runs import run_benchmark


def _run(*args: str):
    return run_benchmark("host_overhead.py", list(args), interpret=False)


def test_host_overhead_prints_a_row_per_bit_width():
    run = _run("--bits", "3,2", "--repeats", "20")
    assert run.returncode == 0, run.stderr[-3000:]
    rows = re.findall(r"^\| pvq \| (\d) \| (\S+) \| (\S+) \| ([\d.]+) \| ([\d.]+) \| (-?[\d.]+) \|$", run.stdout, re.M)
    assert [r[0] for r in rows] == ["3", "2"], run.stdout
    assert {r[2] for r in rows} == {"none", "input+output"}  # 3 bits: the fused plan; 2 bits: the layer plan
    for _, _, _, forward, bare, ours in rows:
        assert abs(float(forward) - float(bare) - float(ours)) < 0.11


def test_host_overhead_refuses_rows_of_the_fused_kernels():
    bad = _run("--rows", "16")
    assert bad.returncode == 2 and "--rows: more than 16" in bad.stderr, bad.stderr[-500:]
