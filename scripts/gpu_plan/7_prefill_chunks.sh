#!/usr/bin/env bash
# Call 7 (session 28): one layer's prefill product with the layer decoded in chunks into one reused buffer (in L2)
# against the whole-layer decode + cuBLAS and fp16 (benchmarks/prefill_chunks.py), then the rows decode's GPU tests.
# No CUDA extension builds: Triton only (about 3 min on a fresh machine). SHAPES, ROWS, CHUNKS override the
# benchmark's defaults; LIMIT (default 300 s). With MODEL=yes, then the 7B prefill of fp16, pvq3 and pvq2 with the
# whole-layer decode against chunks (benchmarks/prefill.py --chunks whole,$MODEL_CHUNKS --profile; the CUDA
# extensions build first, about 2 min; MODEL_LIMIT default 270 s).
set -u -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name --format=csv,noheader
timeout ${LIMIT:-300} python3 benchmarks/prefill_chunks.py ${SHAPES:+--shapes $SHAPES} ${ROWS:+--rows $ROWS} \
  ${CHUNKS:+--chunks $CHUNKS} > $OUT/prefill_chunks.txt 2>&1
echo "exit $?"; grep -E "^\||not timed|Error|error" $OUT/prefill_chunks.txt | cut -c1-300
say prefill_chunks
if [ "${MODEL:-no}" = yes ]; then
  timeout ${MODEL_LIMIT:-270} python3 benchmarks/prefill.py --methods fp16,pvq3,pvq2 --prompts 512,2048 \
    --chunks whole,${MODEL_CHUNKS:-2048} --profile > $OUT/prefill_model_chunks.txt 2>&1
  echo "exit $?"; grep -E "^\||Error|error" $OUT/prefill_model_chunks.txt | cut -c1-300
  say prefill_model
fi
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_triton_rows.py tests/kernels/test_triton_launch.py tests/kernels/test_backend.py \
  > $OUT/prefill_chunks_tests.txt 2>&1
echo "exit $?"; tail -3 $OUT/prefill_chunks_tests.txt
say tests
