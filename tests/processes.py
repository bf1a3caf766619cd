"""A real run killed mid-way: the test helpers of tests/models/test_kill.py and test_resume.py."""

import os
import signal
import subprocess
import sys

import pytest


def kill_at_pause(tmp_path, runner: str, args: list[str], what: str) -> None:
    """Run the Python source ``runner`` with ``args`` in a new process, wait for it to print a line
    starting ``PAUSE``, then SIGKILL it (a test failure, naming ``what``, if it ends first)."""
    script = tmp_path / "runner.py"
    script.write_text(runner)
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("PAUSE"):
                break
        else:
            pytest.fail(f"the run ended before reaching {what} (exit {proc.wait()})")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
