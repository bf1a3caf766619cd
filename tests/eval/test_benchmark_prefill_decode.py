"""``benchmarks/prefill_decode.py`` on the CPU under Triton's interpreter at toy sizes: both tables come out (every
tile's layer equal to the package's, the overlapped order's outputs equal to the plain order's), and bad arguments
are refused before any layer is built."""

from benchmark_runs import run_benchmark


def _run(*args: str, interpret: bool = True):
    return run_benchmark("prefill_decode.py", ["--device", "cpu", "--small", *args], interpret=interpret)


def test_both_tables_on_toy_layers():
    run = _run("--rows", "20", "--bits", "3", "--blocks", "1", "--tiles", "1x4,2x8")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| 160x256 | 3 | " in run.stdout and "differs" not in run.stdout, run.stdout[-2000:]
    assert "| 20 | 3 | " in run.stdout and "outputs differ" not in run.stdout, run.stdout[-2000:]


def test_bad_arguments_are_refused():
    for args, message in ((("--tiles", "2x3"), "warps 1, 2, 4, 8 or 16"),
                          (("--tiles", "big"), "a tile is STEPSxWARPS"),
                          (("--bits", "4"), "--bits takes 2 and 3"),
                          (("--tables", "tiles,speed"), "--tables takes tiles, overlap or both"),
                          (("--blocks", "0"), "--blocks and --rows are positive")):
        bad = _run(*args)
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr[-500:])
    bad = _run(interpret=False)
    assert bad.returncode == 2 and "TRITON_INTERPRET=1" in bad.stderr
