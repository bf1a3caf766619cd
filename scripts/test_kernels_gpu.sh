#!/usr/bin/env bash
# tests/kernels on a GPU machine, one pytest process per test file side by side.
#
# On a GPU every kernel variant a test asks for is compiled (Triton, and nvcc for pvq/kernels/csrc on
# first use), one at a time per process on the CPU; the files share the GPU, so running them side by
# side divides the wall time by about the number of files. Each file runs under a time limit; the
# script prints each file's result line and slowest tests, the log of any file that failed, and exits
# non-zero if one failed or ran out of time.
#
# usage: scripts/test_kernels_gpu.sh [seconds per file, default 290]
#        (PYTHON=... picks the interpreter, FILES="a.py b.py" the test files)
set -u
limit=${1:-290}
py=${PYTHON:-python3}
logs=$(mktemp -d)
start=$(date +%s)
declare -A pids
for f in ${FILES:-tests/kernels/test_*.py}; do
  n=$(basename "$f" .py)
  timeout "$limit" "$py" -m pytest "$f" -p no:cacheprovider --durations=4 >"$logs/$n.log" 2>&1 &
  pids[$n]=$!
done
failed=0
for n in $(printf '%s\n' "${!pids[@]}" | sort); do
  wait "${pids[$n]}"
  rc=$?
  summary=$(grep -E "(passed|failed|error|skipped|no tests ran)" "$logs/$n.log" | tail -1)
  [ "$rc" = 124 ] && summary="TIMED OUT after ${limit} s"
  echo "== $n (rc $rc): $summary"
  grep -E "^[0-9.]+s (call|setup)" "$logs/$n.log" | head -4 | sed 's/^/     /'
  if [ "$rc" != 0 ] && [ "$rc" != 5 ]; then
    failed=1
    tail -60 "$logs/$n.log" | sed 's/^/   | /'
  fi
done
echo "tests/kernels: $(( $(date +%s) - start )) s wall, $([ $failed = 0 ] && echo all passed || echo FAILURES)"
exit $failed
