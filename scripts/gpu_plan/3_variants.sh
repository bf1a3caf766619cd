#!/usr/bin/env bash
# Call 3: three staging experiments of leafrow8_gemv.cu, each checked against the package's product, then timed
# beside it. See README.md here.
set -u -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
timeout 560 python3 benchmarks/speed_layout_device.py --skip-check --layouts rows --shapes 11008x4096,4096x11008,4096x4096,1024x4096,28672x8192 --batches 1,4,8,16 --bits 2,3 --rows-variant spread:PVQ_SPREAD_LEAVES=1 --rows-variant async:PVQ_ASYNC_TABLES=1 --rows-variant staged:PVQ_ASYNC_TABLES=1+PVQ_BATCHED_X=1 > $OUT/speed_variants.txt 2>&1; grep -E "batch [0-9]+:|variant|Error|error" $OUT/speed_variants.txt | cut -c1-400 | head -80
say variants
