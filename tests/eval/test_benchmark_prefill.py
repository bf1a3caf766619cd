"""``benchmarks/prefill.py`` on the CPU at toy sizes (fp16 and int4 rows: pvq rows run Triton's interpreter, minutes):
the rows run, the table lists them against fp16, and bad arguments are refused before any model is built."""

from benchmark_runs import run_benchmark

SHAPES = ["--device", "cpu", "--layers", "1", "--hidden", "128", "--intermediate", "256", "--vocab", "256", "--heads",
          "2", "--repeats", "1"]


def _run(*args: str):
    return run_benchmark("prefill.py", [*SHAPES, *args], interpret=False)


def test_prefill_benchmark_rows_and_table():
    run = _run("--methods", "fp16,int4", "--prompts", "8,24")
    assert run.returncode == 0, run.stderr[-3000:]
    for row in ("| fp16 | 8 | ", "| fp16 | 24 | ", "| int4 | 8 | ", "| int4 | 24 | "):
        assert row in run.stdout, run.stdout[-2000:]
    assert "| fp16 | 24 | " in run.stdout and " | 1.00 | " in run.stdout


def test_prefill_benchmark_refuses_bad_arguments():
    for args, message in ((("--methods", "int4,fp16"), "fp16 (first, where named)"),
                          (("--prompts", "a"), "--prompts takes comma-separated numbers"),
                          (("--rotation", "fused:5"), "--rotation takes auto, layer, fused or fused:B"),
                          (("--rotation", "sideways"), "--rotation takes auto"),
                          (("--profile-python",), "--profile-python goes with --profile"),
                          (("--launches", "sometimes"), "--launches takes straight, jit or both"),
                          (("--launches", "jit,jit"), "--launches takes straight, jit or both"),
                          (("--methods", "fp16,pvq3"), "TRITON_INTERPRET=1"),
                          (("--graph",), "--graph replays CUDA graphs")):
        bad = _run(*args)
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr[-500:])
