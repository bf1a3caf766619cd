#!/usr/bin/env bash
# Call 3: the 7B step at batch 8, merged and not (PLAN: the rotation plan call 2 found faster). See README.md here.
set -u -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
# without PLAN: the faster pvq3 plan of call 2's step (left in /tmp by 2_step.sh), else fused
PLAN=${PLAN:-$(python3 -c "
import json
rows = [r for r in json.load(open('/tmp/generate_step.json'))['rows'] if r['method'].startswith('pvq3 (')]
print(max(rows, key=lambda r: r['tokens_per_s'])['method'].split('(')[1].split(')')[0])" 2>/dev/null || echo fused)}
echo "plan $PLAN"
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
timeout 240 python3 benchmarks/generate.py --layers 32 --rotation $PLAN --merge no,yes --new-tokens 32 --methods fp16,int4,pvq3 --batch 8 --json $OUT/generate_batch8.json > $OUT/generate_batch8.txt 2>&1; grep -E "merged products|^\||Error|error" $OUT/generate_batch8.txt
say batch8
