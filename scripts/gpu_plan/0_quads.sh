#!/usr/bin/env bash
# Call 0 (sessions 30 and 31): stages run in the order STAGES names them (comma list; default pdl_tests,pdl_step: about 6 min on a fresh machine; table alone about 6 min):
#   build      the four CUDA extensions built side by side: "built [True, True, True, True] N s" (_stages.sh)
#   table      the per-layer goal table with the quad layouts, prefill and the weights out of L2 (--cold 3): an H200 is
#              what the goals name
#   pdl        one and eight rows cold and warm, each product also as a programmatic dependent launch (session 31)
#   pdl_step   the compiled 7B step at batch 1 with the decoder's default options (programmatic launches on sm_90+),
#              and without them (session 31; down_proj's gated rotation launched so too measured no faster in session 32 and left)
#   goal_step  the compiled 7B step at batch 1 as the decoder compiles it, fp16, int4, pvq3 and pvq2 (the goal's row;
#              session 33: on an H200, the first call there)
#   pdl_tests  the GPU tests of programmatic launches (test_leaf_rows.py's, test_compiled_step.py; session 32 ran only
#              the first: its -k deselected the second)
#   generate   the 7B step at batch 8 under triton and triton-rows (session 30, H100)
#   rows_tests the GPU run of the triton-rows backend's tests (session 30, H100)
#   ncu        Nsight Compute on the one-row plain and quad kernels (session 30, H100)
# Outputs under $OUT.
source "$(dirname "$0")/_stages.sh"
stage_table() {
  timeout ${TABLE_LIMIT:-380} python3 benchmarks/speed_layout_device.py --skip-check --layouts rows,points,quads \
    --shapes ${SHAPES:-11008x4096,4096x4096,4096x11008} --batches ${BATCHES:-1,2,4,8,16} --bits 2,3 --prefill=${PREFILL-512,2048} --cold 3 \
    > $OUT/goal_table.txt 2>&1
  echo "exit $?"; grep -E "batch [0-9]+:|prefill|Error|error" $OUT/goal_table.txt | grep -v "off the plain" | cut -c1-400
  sed -n "/weights out of L2/,\$p" $OUT/goal_table.txt
}
stage_pdl() {  # one and eight rows warm and cold, each product also as a programmatic dependent launch (-pdl columns)
  timeout ${PDL_TABLE_LIMIT:-200} python3 benchmarks/speed_layout_device.py --skip-check --layouts rows,points \
    --shapes 11008x4096,4096x4096 --batches ${PDL_BATCHES:-1,8} --bits 2,3 --cold 3 --programmatic \
    > $OUT/pdl_table.txt 2>&1
  echo "exit $?"; grep -E "batch [0-9]+:|Error|error" $OUT/pdl_table.txt | grep -v "off the" | cut -c1-700
  sed -n "/weights out of L2/,\$p" $OUT/pdl_table.txt
}
stage_generate() {
  timeout ${GEN_LIMIT:-260} python3 benchmarks/generate.py --layers 32 --rotation fused:256 --merge yes --compile yes \
    --batch 8 --new-tokens 32 --methods ${GEN_METHODS:-fp16,pvq3} --pvq-backends triton,triton-rows > $OUT/generate_b8.txt 2>&1
  echo "exit $?"; grep -E "^\||Error|error" $OUT/generate_b8.txt | cut -c1-300
}
stage_pdl_step() {  # the 7B step compiled, batch 1, fp16 and pvq3: as the decoder compiles it (inductor's and pvq's
                   # kernels as programmatic dependent launches on sm_90+, session 31), then with triton.enable_pdl=False
  for opt in "" "--inductor-option triton.enable_pdl=False"; do
    name=pdl_step${opt:+_$(echo $opt | tr -dc 'a-z' | cut -c1-24)}
    timeout ${PDL_LIMIT:-150} python3 benchmarks/generate.py --layers 32 --rotation fused:256 --merge yes --compile yes \
      --new-tokens 64 --methods ${PDL_METHODS:-fp16,pvq3} $opt > $OUT/$name.txt 2>&1
    echo "exit $? ${opt:-default options}"; grep -E "^\||Error|error|first tokens" $OUT/$name.txt | cut -c1-300
  done
}
stage_goal_step() {  # the goal's end-to-end row: the decoder's default options, every method the goal names
  timeout ${GOAL_LIMIT:-330} python3 benchmarks/generate.py --layers 32 --rotation fused:256 --merge yes --compile yes \
    --new-tokens 64 --methods ${GOAL_METHODS:-fp16,int4,pvq3,pvq2} > $OUT/goal_step.txt 2>&1
  echo "exit $?"; grep -E "^\||Error|error|first tokens" $OUT/goal_step.txt | cut -c1-300
}
stage_pdl_tests() {  # the GPU tests of programmatic launches: products, and the compiled step against the eager one
  timeout ${PDL_TEST_LIMIT:-200} python3 -m pytest -q -p no:cacheprovider tests/kernels/test_compiled_step.py \
    "tests/kernels/test_leaf_rows.py::test_programmatic_launches_give_the_same_product_on_the_stream_and_in_a_graph" > $OUT/pdl_tests.txt 2>&1
  echo "exit $?"; tail -3 $OUT/pdl_tests.txt
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
run_stages "${STAGES:-pdl_tests,pdl_step}"
