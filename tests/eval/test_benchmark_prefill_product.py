"""``benchmarks/prefill_product.py`` on the CPU under Triton's interpreter at a toy shape (a smoke test: the fused
product is checked against decode + cuBLAS and tabled), and its refusals before any layer is built."""

from benchmark_runs import run_benchmark


def _run(*args: str, interpret: bool = True):
    return run_benchmark("prefill_product.py", ["--device", "cpu", *args], interpret=interpret)


def test_prefill_product_smoke_run():
    run = _run("--shapes", "40x256", "--rows", "20", "--bits", "3,2", "--configs", "16x4,16x4x2x64")
    assert run.returncode == 0, run.stderr[-3000:]
    for bits in (3, 2):
        line = next((ln for ln in run.stdout.splitlines() if ln.startswith(f"| 40x256 | {bits} | 20 | ")), None)
        assert line is not None, run.stdout[-2000:]
        assert "not timed" not in run.stdout and line.count("[") == 2, line  # checked, then timed (both configs)


def test_prefill_product_refuses_bad_arguments():
    for args, interpret, message in ((("--shapes", "40x200"), True, "a multiple of 128"),
                                     (("--shapes", "40"), True, "--shapes takes AxB"),
                                     (("--configs", "48x4"), True, "--configs: BM one of"),
                                     (("--configs", "16x4x2x48"), True, "--configs: BN 32 or 64"),
                                     (("--configs", "16x4x2x32x1"), True, "--configs takes AxB"),
                                     (("--bits", "4"), True, "--bits: 3 (leaf pairs) or 2"),
                                     (("--rows", "a"), True, "comma-separated numbers"),
                                     ((), False, "set TRITON_INTERPRET=1")):
        bad = _run(*args, interpret=interpret)
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr[-500:])
