"""``benchmarks/generate.py`` end to end on the CPU at toy sizes: every row runs, merged rows give the tokens
of the unmerged ones (same weights, same codes), and the table lists them."""

from benchmark_runs import run_benchmark


def test_generate_benchmark_with_merged_rows():
    args = ["--device", "cpu", "--layers", "2", "--hidden", "256", "--intermediate", "768", "--vocab", "512", "--heads",
            "4", "--methods", "fp16,int4,pvq3", "--rotation", "fused", "--merge", "no,yes", "--new-tokens", "4"]
    run = run_benchmark("generate.py", args, interpret=False, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert out.count("4 merged products; first tokens equal to the unmerged row's") == 3, out[-3000:]
    for label in ("fp16", "fp16 merged", "int4", "int4 merged", "pvq3 (fused)", "pvq3 (fused) merged"):
        assert f"\n| {label} | " in out
    bad = run_benchmark("generate.py", ["--merge", "maybe"], interpret=False, timeout=120)
    assert bad.returncode == 2 and "--merge takes auto, no, yes or no,yes" in bad.stderr


def test_generate_benchmark_runs_pvq_rows_through_each_named_backend():
    """``--pvq-backends``: a pvq row per backend (here the dense path and ``triton-rows`` under Triton's interpreter),
    the same first tokens."""
    args = ["--device", "cpu", "--layers", "1", "--hidden", "128", "--intermediate", "256", "--vocab", "256", "--heads",
            "4", "--methods", "fp16,pvq3", "--rotation", "fused", "--merge", "no", "--new-tokens", "2",
            "--pvq-backends", "dense,triton-rows"]
    run = run_benchmark("generate.py", args, interpret=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[triton-rows] first tokens equal to the first backend's row's" in run.stdout, run.stdout[-3000:]
    for label in ("pvq3 (fused) [dense]", "pvq3 (fused) [triton-rows]"):
        assert f"\n| {label} | " in run.stdout
    bad = run_benchmark("generate.py", ["--device", "cpu", "--pvq-backends", "triton,fast"], interpret=False, timeout=120)
    assert bad.returncode == 2 and "--pvq-backends takes auto or registered backends" in bad.stderr
    assert "['fast']" in bad.stderr and "row fp16" not in bad.stdout  # refused before any model is built


def test_generate_benchmark_refuses_malformed_experiments_before_any_model():
    """``--rows-variant`` (benchmarks/_variants.py) and ``--inductor-option``: exit 2 naming what to write."""
    for args, says in ((["--rows-variant", "pdl"], "--rows-variant takes NAME:DEFINE[+DEFINE]"),
                       (["--inductor-option", "triton.enable_pdl"], "--inductor-option takes KEY=VALUE")):
        bad = run_benchmark("generate.py", ["--device", "cpu", *args], interpret=False, timeout=120)
        assert bad.returncode == 2 and says in bad.stderr, bad.stderr[-1000:]
        assert "row fp16" not in bad.stdout


def test_inductor_options_are_python_literals():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks",
                        "generate.py")
    import sys

    sys.path.insert(0, os.path.dirname(path))
    try:
        spec = importlib.util.spec_from_file_location("generate_bench", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(os.path.dirname(path))
    assert mod.parse_inductor_options(["triton.enable_pdl=True", "max_autotune = 0", "mode=fast"]) == {
        "triton.enable_pdl": True, "max_autotune": 0, "mode": "fast"}
    assert mod.parse_inductor_options([]) is None  # the decoder's defaults, not an empty set that switches them off

