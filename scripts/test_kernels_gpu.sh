#!/usr/bin/env bash
# tests/kernels on a GPU machine, the tests spread over several pytest processes side by side.
#
# On a GPU every kernel variant a test asks for is compiled (Triton, and nvcc for pvq/kernels/csrc on
# first use), one at a time per process on the CPU; the processes share the GPU, so spreading the tests
# divides the wall time by about the number of processes. The test ids are collected once and dealt
# round robin (file by file, so one file's slow compiles land in different processes) into P chunks;
# each chunk runs under a time limit. The script prints each chunk's result line and slowest tests, the
# log of any chunk that failed, and exits non-zero if one failed or ran out of time.
#
# usage: scripts/test_kernels_gpu.sh [seconds per chunk, default 290] [processes, default: cores, at most 12]
#        (PYTHON=... picks the interpreter, FILES="a.py b.py" the test files)
set -u
limit=${1:-290}
cores=$(nproc 2>/dev/null || echo 4)
procs=${2:-$(( cores < 12 ? cores : 12 ))}
py=${PYTHON:-python3}
logs=$(mktemp -d)
start=$(date +%s)
files=${FILES:-tests/kernels/test_*.py}
# shellcheck disable=SC2086
"$py" -m pytest $files -p no:cacheprovider -o addopts= --collect-only -q 2>/dev/null | grep "::" >"$logs/ids.txt"
total=$(wc -l <"$logs/ids.txt")
[ "$total" -gt 0 ] || { echo "no tests collected from $files"; exit 2; }
echo "collected $total tests in $(( $(date +%s) - start )) s; $procs processes, ${limit} s each"
awk -v p="$procs" -v d="$logs" '{ print > (d "/chunk" (NR - 1) % p ".txt") }' "$logs/ids.txt"
declare -A pids
for c in "$logs"/chunk*.txt; do
  n=$(basename "$c" .txt)
  # shellcheck disable=SC2046
  timeout "$limit" "$py" -m pytest $(cat "$c") -p no:cacheprovider --durations=3 >"$logs/$n.log" 2>&1 &
  pids[$n]=$!
done
failed=0
for n in $(printf '%s\n' "${!pids[@]}" | sort -V); do
  wait "${pids[$n]}"
  rc=$?
  summary=$(grep -E "(passed|failed|error|skipped|no tests ran)" "$logs/$n.log" | tail -1)
  [ "$rc" = 124 ] && summary="TIMED OUT after ${limit} s ($(grep -cE "PASSED|FAILED" "$logs/$n.log" || true) reported)"
  echo "== $n, $(wc -l <"$logs/$n.txt") tests (rc $rc): $summary"
  grep -E "^[0-9.]+s (call|setup)" "$logs/$n.log" | head -3 | sed 's/^/     /'
  if [ "$rc" != 0 ] && [ "$rc" != 5 ]; then
    failed=1
    tail -60 "$logs/$n.log" | sed 's/^/   | /'
  fi
done
echo "tests/kernels: $total tests, $(( $(date +%s) - start )) s wall, $([ $failed = 0 ] && echo all passed || echo FAILURES)"
exit $failed
