"""``benchmarks/compile_cuda_report.py`` without a compiler: its reading of ``nvcc --time``'s file and its refusal of
``--phases`` without ``--whole`` (before any compile)."""

import importlib.util
import os

from benchmark_runs import ROOT, run_benchmark

_spec = importlib.util.spec_from_file_location("compile_cuda_report",
                                               os.path.join(ROOT, "benchmarks", "compile_cuda_report.py"))
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)

# the shape of the file nvcc 12 writes (session 35's leafrow8_gemv.cu, two phases cut)
NVCC_TIME = """source file name , phase name , phase input files , phase output file , arch , tool, metric , unit
a.cu , gcc (preprocessing 4) , a.cu  , /tmp/x.ii ,  , nvcc , 826.3510 , ms
a.cu , cicc ,  /tmp/x1.ii  , /tmp/x.ptx , compute_90 , nvcc , 68700.6641 , ms
a.cu , ptxas , /tmp/x.ptx  , /tmp/x.cubin , sm_90 , nvcc , 11000.5967 , ms
a.cu , gcc (compiling) ,   , /tmp/k.o , compute_90 , nvcc , 9920.0068 , ms
 , nvcc (driver) ,  , /tmp/k.o ,  , nvcc , 0.7969 , ms
"""


def test_nvcc_phases_lists_each_phase_in_seconds(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(NVCC_TIME)
    assert report.nvcc_phases(str(path)) == ("gcc (preprocessing 4) 0.8 s, cicc 68.7 s, ptxas 11.0 s, "
                                             "gcc (compiling) 9.9 s")


def test_phases_without_whole_is_refused():
    run = run_benchmark("compile_cuda_report.py", ["--phases"], interpret=False, timeout=60)
    assert run.returncode == 2 and "--phases times the whole build: add --whole" in run.stderr, run.stderr
