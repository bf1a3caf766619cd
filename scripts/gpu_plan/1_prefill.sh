#!/usr/bin/env bash
# Call 1 (sessions 32-33): what the 512-token prefill pays beyond fp16 without the host. Stages run in the order STAGES
# names them (comma list; default graph,tests: about 3 min on a fresh machine with GRAPH_ARGS=--skip-cuda-build):
#   graph    the 7B prefill eager, replayed from a CUDA graph and through StaticDecoder's padded prefill graphs
#            (benchmarks/prefill.py --graph): fp16, pvq3, pvq2 (session 33, H100: 512 tokens 1.34x and 1.26x fp16)
#   tests    the decode's tests (test_triton_rows.py), the decoder's prefill graphs (test_decoding.py) and the compiled
#            step (test_compiled_step.py; TESTS_MORE= leaves it out, and with it the CUDA builds)
# (Session 33 measured session 32's other two stages and removed them with what they timed: the decode with 2 or 4
# tiles a program or 8 warps, no faster; the next product's decode on a second stream, nothing hidden. Their
# benchmark, benchmarks/prefill_decode.py, is in the history before that commit; raw outputs docs/bench/*_s33_h100.txt.)
# Outputs under $OUT.
source "$(dirname "$0")/_stages.sh"
stage_graph() {
  timeout ${GRAPH_LIMIT:-260} python3 benchmarks/prefill.py --methods ${METHODS:-fp16,pvq3,pvq2} --prompts 512,2048 \
    --rotation fused:256 --graph ${GRAPH_ARGS:-} > $OUT/prefill_graph.txt 2>&1
  echo "exit $?"; grep -E "^\||Error|error|no CUDA graph" $OUT/prefill_graph.txt | cut -c1-300
}
stage_tests() {
  timeout ${TEST_LIMIT:-150} python3 -m pytest -q -p no:cacheprovider tests/kernels/test_triton_rows.py \
    "tests/eval/test_decoding.py::test_prefill_replayed_from_graphs_equals_the_padded_eager_prefill" ${TESTS_MORE-tests/kernels/test_compiled_step.py} \
    > $OUT/prefill_tests.txt 2>&1
  echo "exit $?"; tail -3 $OUT/prefill_tests.txt
}
run_stages "${STAGES:-graph,tests}"
