"""``benchmarks/prefill_chunks.py`` on the CPU under Triton's interpreter at a toy shape (a smoke test: the chunked
product is checked against decode + cuBLAS and tabled), and its refusals before any layer is built."""

from benchmark_runs import run_benchmark


def _run(*args: str, interpret: bool = True):
    return run_benchmark("prefill_chunks.py", ["--device", "cpu", *args], interpret=interpret)


def test_prefill_chunks_smoke_run():
    run = _run("--shapes", "40x256", "--rows", "20", "--bits", "3,2", "--chunks", "32,64")
    assert run.returncode == 0, run.stderr[-3000:]
    for bits in (3, 2):
        line = next((ln for ln in run.stdout.splitlines() if ln.startswith(f"| 40x256 | {bits} | 20 | ")), None)
        assert line is not None, run.stdout[-2000:]
        assert "not timed" not in run.stdout and line.count("[") == 2, line  # both chunk sizes checked, then timed


def test_prefill_chunks_refuses_bad_arguments():
    for args, interpret, message in ((("--shapes", "40x200"), True, "a multiple of 128"),
                                     (("--shapes", "40"), True, "--shapes takes OUTxIN"),
                                     (("--chunks", "48"), True, "--chunks: positive multiples of 32"),
                                     (("--bits", "4"), True, "--bits: 3 (leaf pairs) or 2"),
                                     (("--rows", "a"), True, "comma-separated numbers"),
                                     ((), False, "set TRITON_INTERPRET=1")):
        bad = _run(*args, interpret=interpret)
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr[-500:])
