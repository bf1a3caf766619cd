#!/usr/bin/env bash
# Call 5: the whole-layer Triton decode (prefill's decode + cuBLAS) swept over tiles of row groups x steps x warps
# (benchmarks/decode_tiles.py): each tile checked bit for bit against the default tile, timed, and the fastest on
# every shape with 512 and 2048 prefill rows against fp16. LIMIT (default 240 s). See README.md here.
set -u -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
timeout ${LIMIT:-240} python3 benchmarks/decode_tiles.py ${ARGS:-} > $OUT/decode_tiles.txt 2>&1
echo "exit $?"
grep -vE "^\[ *[0-9.]+ s\] tile " $OUT/decode_tiles.txt | cut -c1-400
say decode_tiles
