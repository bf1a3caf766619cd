#!/usr/bin/env bash
# Call 1: build, the refusal script (errors as values), every kernel test (FILES=... some of them, TEST_LIMIT=s
# per process). See README.md here.
set -u -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
python3 -c "
import time; t=time.perf_counter()
from concurrent.futures import ThreadPoolExecutor
from pvq.kernels import cuda_leaf, cuda_hadamard, cuda_split
jobs = [cuda_leaf._rows_extension, cuda_hadamard._extension, cuda_leaf._extension, cuda_split._extension]
with ThreadPoolExecutor(4) as p: print('built', list(p.map(lambda f: f() is not None, jobs)), f'{time.perf_counter()-t:.1f} s')" 2>&1 | tail -3
say built
python3 - > $OUT/refusals.txt 2>&1 <<'PY'
import re, subprocess, sys
src = open("tests/kernels/test_leaf_rows.py").read()
script = re.search(r'REFUSALS = """(.*?)"""', src, re.S).group(1)
r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", script], capture_output=True, text=True)
print("rc", r.returncode); print("stdout:", r.stdout); print("stderr:", r.stderr[:6000])
PY
head -30 $OUT/refusals.txt
say refusals
TEST_LIMIT=${TEST_LIMIT:-230}
timeout $((TEST_LIMIT + 20)) bash scripts/test_kernels_gpu.sh $TEST_LIMIT 6 > $OUT/kernel_tests.txt 2>&1; grep -E "^==|wall|FAILED" $OUT/kernel_tests.txt | head -40
say tests
