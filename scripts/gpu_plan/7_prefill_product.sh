#!/usr/bin/env bash
# Call 7 (written in session 27, not yet run): one layer's product at prefill's rows, the decode inside the GEMM's K
# loop (pvq/kernels/triton_rows.py, leaf_rows_matmul_triton) against decode + cuBLAS and fp16
# (benchmarks/prefill_product.py), then its GPU tests (bf16 runs only there). No CUDA extension builds: Triton only
# (about 4 min on a fresh machine). SHAPES, ROWS, CONFIGS override the benchmark's defaults; LIMIT (default 330 s).
set -u -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name --format=csv,noheader
timeout ${LIMIT:-330} python3 benchmarks/prefill_product.py ${SHAPES:+--shapes $SHAPES} ${ROWS:+--rows $ROWS} \
  ${CONFIGS:+--configs $CONFIGS} > $OUT/prefill_product.txt 2>&1
echo "exit $?"; grep -E "^\||not timed|best fused|Error|error" $OUT/prefill_product.txt | cut -c1-250
say prefill_product
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_triton_rows.py tests/kernels/test_triton_launch.py \
  > $OUT/prefill_product_tests.txt 2>&1
echo "exit $?"; tail -3 $OUT/prefill_product_tests.txt
say tests
