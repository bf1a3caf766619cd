#!/usr/bin/env bash
# Call 1: build, the refusal script (errors as values), every kernel test (FILES=... some of them, TEST_LIMIT=s
# per process). See README.md here.
source "$(dirname "$0")/_stages.sh"
stage_build
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
