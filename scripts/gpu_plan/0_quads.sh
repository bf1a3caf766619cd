#!/usr/bin/env bash
# Call 0 (sessions 30 and 31): stages run in the order STAGES names them (comma list; default table,early):
#   table      the per-layer goal table with the quad layouts, prefill and the weights out of L2 (--cold 3): an H200 is
#              what the goals name
#   early      one and eight rows cold and warm through three experiments' builds of leafrow8_gemv.cu: early =
#              PVQ_EARLY_WORDS (the first step's words loaded before the tables are staged), pdl = PVQ_PDL
#              (programmatic dependent launch: a product's tables staged while the previous kernel finishes), pdlearly
#              = both
#   pdl_step   the compiled 7B step at batch 1, pvq3 also through the PVQ_PDL build (INDUCTOR_PDL=1: inductor's kernels too)
#   generate   the 7B step at batch 8 under triton and triton-rows (session 30, H100)
#   rows_tests the GPU run of the triton-rows backend's tests (session 30, H100)
#   ncu        Nsight Compute on the one-row plain and quad kernels (session 30, H100)
# Outputs under $OUT.
set -u -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); echo "$GPU"
stage_table() {
  timeout ${TABLE_LIMIT:-380} python3 benchmarks/speed_layout_device.py --skip-check --layouts rows,points,quads \
    --shapes ${SHAPES:-11008x4096,4096x4096,4096x11008} --batches ${BATCHES:-1,2,4,8,16} --bits 2,3 --prefill=${PREFILL-512,2048} --cold 3 \
    > $OUT/goal_table.txt 2>&1
  echo "exit $?"; grep -E "batch [0-9]+:|prefill|Error|error" $OUT/goal_table.txt | grep -v "off the plain" | cut -c1-400
  sed -n "/weights out of L2/,\$p" $OUT/goal_table.txt
}
stage_early() {
  timeout ${EARLY_LIMIT:-240} python3 benchmarks/speed_layout_device.py --skip-check --layouts rows,points \
    --shapes 11008x4096,4096x4096 --batches ${EARLY_BATCHES:-1,8} --bits 2,3 --cold 3 \
    --rows-variant early:PVQ_EARLY_WORDS=1 --rows-variant pdl:PVQ_PDL=1 --rows-variant pdlearly:PVQ_PDL=1+PVQ_EARLY_WORDS=1 \
    > $OUT/early_words.txt 2>&1
  echo "exit $?"; grep -E "batch [0-9]+:|Error|error|variants" $OUT/early_words.txt | grep -v "off the" | cut -c1-700
  sed -n "/weights out of L2/,\$p" $OUT/early_words.txt
}
stage_generate() {
  timeout ${GEN_LIMIT:-260} python3 benchmarks/generate.py --layers 32 --rotation fused:256 --merge yes --compile yes \
    --batch 8 --new-tokens 32 --methods ${GEN_METHODS:-fp16,pvq3} --pvq-backends triton,triton-rows > $OUT/generate_b8.txt 2>&1
  echo "exit $?"; grep -E "^\||Error|error" $OUT/generate_b8.txt | cut -c1-300
}
stage_pdl_step() {  # the 7B step compiled, batch 1: fp16, pvq3 and pvq3 through the PVQ_PDL build; INDUCTOR_PDL=1: inductor's
                   # kernels launched as programmatic dependent launches too (every compiled row)
  timeout ${PDL_LIMIT:-300} python3 benchmarks/generate.py --layers 32 --rotation fused:256 --merge yes --compile yes \
    --new-tokens 64 --methods ${PDL_METHODS:-fp16,pvq3} --rows-variant pdl:PVQ_PDL=1 \
    ${INDUCTOR_PDL:+--inductor-option triton.enable_pdl=True} > $OUT/pdl_step${INDUCTOR_PDL:+_inductor}.txt 2>&1
  echo "exit $?"; grep -E "^\||Error|error|first tokens" $OUT/pdl_step${INDUCTOR_PDL:+_inductor}.txt | cut -c1-300
}
stage_rows_tests() {
  timeout ${TEST_LIMIT:-120} python3 -m pytest -q -p no:cacheprovider tests/kernels/test_backend.py -k rows \
    > $OUT/rows_tests.txt 2>&1
  echo "exit $?"; tail -3 $OUT/rows_tests.txt
}
stage_ncu() {
  timeout ${NCU_LIMIT:-170} ncu --set full -k regex:leafrow8_gemv -c 4 python3 benchmarks/speed_layout_device.py \
    --skip-check --layouts rows,quads --shapes 11008x4096 --batches 1 --bits 3 > $OUT/ncu_one_row.txt 2>&1
  echo "exit $?"; grep -E "leafrow8_gemv|Duration|Registers|Warp Cycles|Shared|Issued Ipc" $OUT/ncu_one_row.txt | head -60
}
IFS=, read -r -a ORDER <<< "${STAGES:-table,early}"
for s in "${ORDER[@]}"; do
  if ! declare -F "stage_$s" > /dev/null; then echo "no stage $s (table, early, pdl_step, generate, rows_tests, ncu)"; exit 2; fi
done
for s in "${ORDER[@]}"; do "stage_$s"; say "$s"; done
