"""Session 18's diagnostic: builds ostream_probe.cpp (the C++ compiler, no CUDA) and calls each of its functions in a
child process after each of several imports, printing the return code and the libstdc++ the process mapped. On the
H200 machine every ``m.oss_only(3)`` (an integer written to a std::ostringstream) died with SIGSEGV (rc -11); the rest
returned (docs/bench/bind_diag_s18_h200.txt). Hence pvq::message (pvq/kernels/csrc/host_status.h).

usage: python benchmarks/diag/ostream_probe.py   (about 80 s, most of it the build)"""
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
d = tempfile.mkdtemp()
build = f"""
import torch
from torch.utils.cpp_extension import load
load(name="pvq_diag2", sources=["{os.path.join(HERE, 'ostream_probe.cpp')}"], build_directory="{d}", verbose=False)
"""
r = subprocess.run([sys.executable, "-c", build], capture_output=True, text=True)
print("build rc", r.returncode, r.stderr[-500:])
so = [f for f in os.listdir(d) if f.endswith(".so")][0]
print(subprocess.run(["ldd", os.path.join(d, so)], capture_output=True, text=True).stdout)
calls = ["m.short_string()", "m.const_string()", "m.oss_string_only(3)", "m.oss_only(3)", "m.caught(1)"]
pre = ["", "import numpy", "import scipy.linalg, scipy.stats", "import triton", "import pvq.kernels"]
for p in pre:
    for c in calls:
        code = f"""
import sys, torch
{p}
import importlib.util as u
s = u.spec_from_file_location("pvq_diag2", "{os.path.join(d, so)}"); m = u.module_from_spec(s); s.loader.exec_module(m)
print(repr({c}))
maps = open("/proc/self/maps").read().splitlines()
print(sorted(set(l.split()[-1] for l in maps if "stdc++" in l or "libgcc_s" in l)))
"""
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        print(f"[{p or 'torch only'}] {c}: rc {r.returncode} {r.stdout.strip()[:400]} "
              f"{r.stderr.strip()[-200:] if r.returncode else ''}")
