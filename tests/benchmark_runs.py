"""Running a script of ``benchmarks/`` in a new process from the tests (CPU; Triton's interpreter on or off)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_benchmark(script: str, args: list[str], interpret: bool = True,
                  timeout: int = 300) -> subprocess.CompletedProcess:
    """``python benchmarks/<script> *args`` from the checkout's root, ``TRITON_INTERPRET=1`` where ``interpret``
    (else unset), the checkout first on ``PYTHONPATH``; its output captured as text."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env={**env, "PYTHONPATH": ROOT})
