#!/usr/bin/env bash
# Call 4: the 7B step with the decode step compiled (torch.compile: what lies between the products fused; each pvq
# product one operator) against the same step uncompiled, fp16, int4 and pvq under fused:256 with merged projections,
# and a profile of each row's step without a graph (how much of the common rest the compilation removes).
# METHODS (default fp16,pvq3,int4,pvq2), COMPILE (default no,yes), BATCH (default 1), LIMIT (default 540 s). See README.md here.
set -u -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
METHODS=${METHODS:-fp16,pvq3,int4,pvq2}
COMPILE=${COMPILE:-no,yes}
BATCH=${BATCH:-1}
timeout ${LIMIT:-540} python3 benchmarks/generate.py --layers 32 --rotation fused:256 --merge yes --compile $COMPILE \
  --batch $BATCH --new-tokens 32 --methods $METHODS --profile --json $OUT/generate_compile_b$BATCH.json \
  > $OUT/generate_compile_b$BATCH.txt 2>&1
echo "exit $?"
grep -E "compilation|compile failed|uncompiled row|GPU time per|^\||Error|error" $OUT/generate_compile_b$BATCH.txt | cut -c1-300
say compile
