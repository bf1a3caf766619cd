#!/usr/bin/env bash
# Call 5: prefill of the 7B-shaped Llama (512 and 2048 tokens), fp16, int4, pvq3 and pvq2, pvq with and without its
# whole-layer decodes one layer ahead on a side stream (pvq/kernels/decode_ahead.py, session 25), then the CUDA tests
# of that module. METHODS (default fp16,int4,pvq3,pvq2), PROMPTS (default 512,2048), LIMIT (default 420 s).
set -u -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
timeout ${LIMIT:-420} python3 benchmarks/prefill.py --methods ${METHODS:-fp16,int4,pvq3,pvq2} \
  --prompts ${PROMPTS:-512,2048} > $OUT/prefill.txt 2>&1
echo "exit $?"
grep -E "tokens:|^\||Error|error|skipped" $OUT/prefill.txt | cut -c1-300
say prefill
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_decode_ahead.py > $OUT/decode_ahead_tests.txt 2>&1
echo "exit $?"
tail -5 $OUT/decode_ahead_tests.txt
say tests
