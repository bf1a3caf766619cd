#!/usr/bin/env bash
# Call 7 (session 28): one layer's prefill product with the layer decoded in chunks into one reused buffer (in L2)
# against the whole-layer decode + cuBLAS and fp16 (benchmarks/prefill_chunks.py), then the rows decode's GPU tests.
# No CUDA extension builds: Triton only (about 3 min on a fresh machine). SHAPES, ROWS, CHUNKS override the
# benchmark's defaults; LIMIT (default 300 s).
set -u -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name --format=csv,noheader
timeout ${LIMIT:-300} python3 benchmarks/prefill_chunks.py ${SHAPES:+--shapes $SHAPES} ${ROWS:+--rows $ROWS} \
  ${CHUNKS:+--chunks $CHUNKS} > $OUT/prefill_chunks.txt 2>&1
echo "exit $?"; grep -E "^\||not timed|Error|error" $OUT/prefill_chunks.txt | cut -c1-300
say prefill_chunks
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_triton_rows.py tests/kernels/test_triton_launch.py \
  > $OUT/prefill_chunks_tests.txt 2>&1
echo "exit $?"; tail -3 $OUT/prefill_chunks_tests.txt
say tests
