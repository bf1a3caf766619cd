#!/usr/bin/env bash
# tests/kernels on a GPU machine: one pytest process per test file side by side, and the files named in
# SPLIT (default: test_triton_kernels.py, whose Triton compiles are the long pole) dealt over several.
#
# On a GPU every kernel variant a test asks for is compiled (Triton, and nvcc for pvq/kernels/csrc on
# first use), one at a time per process on the CPU; the processes share the GPU. Dealing every test of
# the directory round robin over 12 processes was tried on an H200 (session 10) and was slower: all
# twelve reached the CUDA-extension tests at once and none finished in 200 s, so only the Triton file
# is dealt. Each process runs under a time limit; the script prints each one's result line and slowest
# tests, the log of any that failed, and exits non-zero if one failed or ran out of time.
#
# usage: scripts/test_kernels_gpu.sh [seconds per process, default 290] [processes per split file, default 6]
#        (PYTHON=... picks the interpreter, FILES="a.py b.py" the test files, SPLIT="name.py ..." the dealt ones)
set -u
limit=${1:-290}
procs=${2:-6}
split=${SPLIT:-test_triton_kernels.py}
py=${PYTHON:-python3}
logs=$(mktemp -d)
start=$(date +%s)
files=${FILES:-tests/kernels/test_*.py}
n=0
for f in $files; do
  if [[ " $split " == *" $(basename "$f") "* ]]; then
    "$py" -m pytest "$f" -p no:cacheprovider -o addopts= --collect-only -q 2>/dev/null | grep "::" >"$logs/ids_$n.txt"
    awk -v p="$procs" -v d="$logs" -v b="$(basename "$f" .py)" '{ print > (d "/" b "." (NR - 1) % p ".txt") }' "$logs/ids_$n.txt"
  else
    echo "$f" >"$logs/$(basename "$f" .py).txt"
  fi
  n=$((n + 1))
done
total=$(cat "$logs"/*.txt | grep -c . || true)
[ "$total" -gt 0 ] || { echo "no tests collected from $files"; exit 2; }
echo "$(ls "$logs"/test_*.txt | wc -l) processes, ${limit} s each ($(( $(date +%s) - start )) s to collect)"
declare -A pids
for c in "$logs"/test_*.txt; do
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
  [ "$rc" = 124 ] && summary="TIMED OUT after ${limit} s"
  echo "== $n (rc $rc): $summary"
  grep -E "^[0-9.]+s (call|setup)" "$logs/$n.log" | head -3 | sed 's/^/     /'
  if [ "$rc" != 0 ] && [ "$rc" != 5 ]; then
    failed=1
    tail -60 "$logs/$n.log" | sed 's/^/   | /'
  fi
done
echo "tests/kernels: $(( $(date +%s) - start )) s wall, $([ $failed = 0 ] && echo all passed || echo FAILURES)"
exit $failed
