#!/usr/bin/env bash
# Call 1 (session 32): what the 512-token prefill pays beyond fp16 without the host, and two ways to pay less. Stages
# run in the order STAGES names them (comma list; default tiles,graph,tests,overlap: about 7 min on a fresh machine):
#   tiles    the whole-layer decode of each 7B product shape with 1, 2 or 4 tiles a program and 4 or 8 warps
#            (benchmarks/prefill_decode.py --tables tiles), beside filling the fp16 layer
#   overlap  two 7B blocks' products at 512 and 2048 rows in one CUDA graph: fp16, pvq as it runs, pvq with the next
#            product's decode on a second stream (--tables overlap)
#   graph    the 7B prefill eager, replayed from a CUDA graph and through StaticDecoder's padded prefill graphs
#            (benchmarks/prefill.py --graph): fp16, pvq3, pvq2
#   tests    the decode's tests (test_triton_rows.py: tiles a program, warps, buffers), the compiled step's and the
#            decoder's prefill graphs (test_decoding.py)
# Outputs under $OUT.
source "$(dirname "$0")/_stages.sh"
stage_tiles() {
  timeout ${TILES_LIMIT:-150} python3 benchmarks/prefill_decode.py --tables tiles --bits ${BITS:-3,2} \
    --tiles ${TILES:-1x4,1x8,2x4,2x8,4x4,4x8} > $OUT/decode_tiles.txt 2>&1
  echo "exit $?"; grep -E "^\||Error|error" $OUT/decode_tiles.txt | cut -c1-300
}
stage_overlap() {
  timeout ${OVERLAP_LIMIT:-120} python3 benchmarks/prefill_decode.py --tables overlap --bits ${BITS:-3,2} \
    --rows ${ROWS:-512,2048} > $OUT/decode_overlap.txt 2>&1
  echo "exit $?"; grep -E "^\||Error|error|differ" $OUT/decode_overlap.txt | cut -c1-300
}
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
run_stages "${STAGES:-tiles,graph,tests,overlap}"
