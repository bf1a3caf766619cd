#!/usr/bin/env bash
# Call 0 (session 30): the quad order (session 29) where it was not yet measured. STAGES (comma list; default
# table,early; session 30 ran generate,rows_tests,ncu on an H100): early = one row with the weights out of L2 through a
# build that loads the first step's words before the tables are staged (PVQ_EARLY_WORDS); table = the per-layer goal table with the quad layouts and prefill (an H200 is what the goals
# name); rows_tests = the GPU run of the triton-rows backend's tests; generate = the 7B step at batch 8 under triton
# and triton-rows; ncu = Nsight Compute on the one-row plain and quad kernels. Outputs under $OUT.
set -u -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); echo "$GPU"
STAGES=",${STAGES:-table,early},"
if [[ $STAGES == *,table,* ]]; then
  timeout ${TABLE_LIMIT:-380} python3 benchmarks/speed_layout_device.py --skip-check --layouts rows,points,quads \
    --shapes ${SHAPES:-11008x4096,4096x4096,4096x11008} --batches ${BATCHES:-1,2,4,8,16} --bits 2,3 --prefill=${PREFILL-512,2048} --cold 3 \
    > $OUT/goal_table.txt 2>&1
  echo "exit $?"; grep -E "batch [0-9]+:|prefill|Error|error" $OUT/goal_table.txt | grep -v "off the plain" | cut -c1-400
  sed -n "/weights out of L2/,\$p" $OUT/goal_table.txt
  say table
fi
if [[ $STAGES == *,early,* ]]; then
  timeout ${EARLY_LIMIT:-200} python3 benchmarks/speed_layout_device.py --skip-check --layouts rows,points \
    --shapes 11008x4096,4096x4096 --batches 1 --bits 2,3 --cold 3 --rows-variant early:PVQ_EARLY_WORDS=1 \
    > $OUT/early_words.txt 2>&1
  echo "exit $?"; grep -E "batch 1:|Error|error" $OUT/early_words.txt | grep -v "off the" | cut -c1-700
  say early
fi
if [[ $STAGES == *,generate,* ]]; then
  timeout ${GEN_LIMIT:-260} python3 benchmarks/generate.py --layers 32 --rotation fused:256 --merge yes --compile yes \
    --batch 8 --new-tokens 32 --methods ${GEN_METHODS:-fp16,pvq3} --pvq-backends triton,triton-rows > $OUT/generate_b8.txt 2>&1
  echo "exit $?"; grep -E "^\||Error|error" $OUT/generate_b8.txt | cut -c1-300
  say generate
fi
if [[ $STAGES == *,rows_tests,* ]]; then
  timeout ${TEST_LIMIT:-120} python3 -m pytest -q -p no:cacheprovider tests/kernels/test_backend.py -k rows \
    > $OUT/rows_tests.txt 2>&1
  echo "exit $?"; tail -3 $OUT/rows_tests.txt
  say rows_tests
fi
if [[ $STAGES == *,ncu,* ]]; then
  timeout ${NCU_LIMIT:-170} ncu --set full -k regex:leafrow8_gemv -c 4 python3 benchmarks/speed_layout_device.py \
    --skip-check --layouts rows,quads --shapes 11008x4096 --batches 1 --bits 3 > $OUT/ncu_one_row.txt 2>&1
  echo "exit $?"; grep -E "leafrow8_gemv|Duration|Registers|Warp Cycles|Shared|Issued Ipc" $OUT/ncu_one_row.txt | head -60
  say ncu
fi
