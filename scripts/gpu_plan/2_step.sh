#!/usr/bin/env bash
# Call 2: the 7B step (rotation in chunks x merged projections), the rotation kernels, the merged shapes and the
# Triton decode. See README.md here.
set -u -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
timeout 260 python3 benchmarks/generate.py --layers 32 --rotation fused,fused:256 --merge no,yes --new-tokens 32 --methods fp16,int4,pvq3 --profile --json $OUT/generate_step.json > $OUT/generate_step.txt 2>&1; grep -E "merged products|GPU time per|^\||Error|error" $OUT/generate_step.txt | cut -c1-300
say step
timeout 60 python3 benchmarks/hadamard.py --sizes 11008,256 --rows 1,4,16,43,172,688 > $OUT/hadamard_chunks.txt 2>&1; tail -15 $OUT/hadamard_chunks.txt
say rotation
timeout 220 python3 benchmarks/speed_layout_device.py --layouts rows --shapes 4096x4096,12288x4096,11008x4096,22016x4096,4096x11008 --batches 1,8,16 --bits 3 --prefill 512,2048 > $OUT/speed_merged_decode.txt 2>&1; grep -E "FAIL|batch [0-9]+:|prefill|Error|error" $OUT/speed_merged_decode.txt | cut -c1-400
say shapes
