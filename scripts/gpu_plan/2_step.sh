#!/usr/bin/env bash
# Call 2: the 7B step (rotation in chunks x merged projections), the rotation kernels, the merged shapes and the
# Triton decode (STAGES="step rotation shapes", default all three). See README.md here.
set -u -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$(date +%s)
STAGES=${STAGES:-step rotation shapes}
has() { [[ " $STAGES " == *" $1 "* ]]; }
say() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
if has step; then
timeout 260 python3 benchmarks/generate.py --layers 32 --rotation fused,fused:256 --merge no,yes --new-tokens 32 --methods fp16,int4,pvq3 --profile --json $OUT/generate_step.json > $OUT/generate_step.txt 2>&1; grep -E "merged products|GPU time per|^\||Error|error" $OUT/generate_step.txt | cut -c1-300
cp $OUT/generate_step.json /tmp/generate_step.json 2>/dev/null  # call 3 picks its plan from it
say step
fi
if has rotation; then
timeout 60 python3 benchmarks/hadamard.py --sizes 11008,256 --rows 1,4,16,43,172,688 > $OUT/hadamard_chunks.txt 2>&1; tail -15 $OUT/hadamard_chunks.txt
say rotation
fi
if has shapes; then
timeout 220 python3 benchmarks/speed_layout_device.py --layouts rows --shapes 4096x4096,12288x4096,11008x4096,22016x4096,4096x11008 --batches 1,8,16 --bits 3 --prefill 512,2048 > $OUT/speed_merged_decode.txt 2>&1; grep -E "FAIL|batch [0-9]+:|prefill|Error|error" $OUT/speed_merged_decode.txt | cut -c1-400
say shapes
fi
