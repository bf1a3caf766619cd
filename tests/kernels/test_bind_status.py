"""The bindings' error path on the CPU: a host function's failed ``pvq::Status``, or an exception thrown inside
it, comes back as a value and reaches Python as a RuntimeError with its message through ``StatusExtension``, and
the process goes on (``csrc/bind_status.h``, the form every CUDA extension is bound in; ``csrc/host_status.h`` says
why). Built by the C++ compiler from ``tests/kernels/csrc/bind_probe.cpp`` and called in a child process that first
imports what the CUDA kernels' callers import, so a crash fails the test instead of killing pytest."""

import os
import shutil
import subprocess
import sys

import pytest

from pvq.kernels.cuda_build import CSRC

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

PROBE = """
import sys
import torch
import pvq.kernels  # noqa: F401  (what a kernel's caller has imported: the backends, Triton)
from pvq.kernels.cuda_build import StatusExtension
from torch.utils.cpp_extension import load
raw = load(name="pvq_bind_probe", sources=[sys.argv[1]], extra_include_paths=[sys.argv[2]],
           build_directory=sys.argv[3], verbose=False)
x = torch.arange(6.0).reshape(2, 3)
y, message = raw.scaled(x, 2)  # what crosses the binding: a value and an empty message
assert torch.equal(y, 2 * x) and message == ""
assert raw.scaled(x, -1) == (None, "factor must be >= 0, got -1")
ext = StatusExtension(raw)
assert torch.equal(ext.scaled(x, 2), 2 * x)
assert ext.two_dimensional(x) is None
for call in (lambda: ext.scaled(x, -1), lambda: ext.scaled(x, 7), lambda: ext.two_dimensional(x[0]),
             lambda: ext.scaled(x, 9)):
    try:
        call()
        print("no error")
    except RuntimeError as e:
        print("RuntimeError:", str(e).splitlines()[0])
print("alive")
"""


@pytest.mark.skipif(shutil.which("c++") is None or shutil.which("ninja") is None and
                    not os.path.exists(os.path.join(os.path.dirname(sys.executable), "ninja")),
                    reason="needs a C++ compiler and ninja")
def test_a_failed_status_is_a_runtime_error_and_the_process_goes_on(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    run = subprocess.run([sys.executable, "-X", "faulthandler", "-c", PROBE,
                          os.path.join(HERE, "csrc", "bind_probe.cpp"), CSRC, str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"rc {run.returncode}: {run.stderr[-3000:]}"
    assert run.stdout.splitlines() == [
        "RuntimeError: factor must be >= 0, got -1",
        "RuntimeError: seven refused by a nested call",
        "RuntimeError: x must be 2-D, got 1 dims",
        "RuntimeError: unexpected C++ exception: nine thrown",
        "alive",
    ]


def test_status_extension_raises_a_message_and_returns_a_result():
    """What the package's callers see of an extension (``load_cuda_extension`` wraps every one): a function's result,
    or RuntimeError with its message; each function looked up once."""
    from pvq.kernels.cuda_build import StatusExtension

    class Module:
        calls = 0

        @staticmethod
        def double(x):
            Module.calls += 1
            return (2 * x, "") if x >= 0 else (None, f"x must be >= 0, got {x}")

    ext = StatusExtension(Module)
    assert ext.double(3) == 6 and ext.double.__name__ == "double"
    assert "double" in vars(ext)  # cached on the instance after the first lookup
    with pytest.raises(RuntimeError, match="x must be >= 0, got -1"):
        ext.double(-1)
    assert Module.calls == 2
    with pytest.raises(AttributeError):
        ext.missing  # noqa: B018
