#!/usr/bin/env bash
# Call 6 (session 27): the host's launch time of one 7B block's calls, the package's straight Triton launches against
# Triton's JIT dispatch (benchmarks/host_launch.py), then the 7B prefill with both (benchmarks/prefill.py --launches
# straight,jit --profile; pvq2 also under fused:256), then the GPU tests of the launchers, the backend and the kernels
# they launch. METHODS (default fp16,pvq3,pvq2), ROTATION (default auto), PROMPTS (default 512,2048), LIMIT (default
# 300 s for the prefill).
set -u -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name --format=csv,noheader
python3 benchmarks/host_launch.py --methods ${METHODS:-fp16,pvq3,pvq2} --rotation ${ROTATION:-auto} \
  > $OUT/host_launch.txt 2>&1
echo "exit $?"; grep -E "^\||straight launch|Error|error" $OUT/host_launch.txt | cut -c1-200
say host_launch
timeout ${LIMIT:-300} python3 benchmarks/prefill.py --methods ${METHODS:-fp16,pvq3,pvq2} --prompts ${PROMPTS:-512,2048} \
  --rotation ${ROTATION:-auto} --launches straight,jit --profile > $OUT/prefill_launches.txt 2>&1
echo "exit $?"; grep -E "^\||Error|error" $OUT/prefill_launches.txt | cut -c1-300
say prefill
timeout 120 python3 benchmarks/prefill.py --methods fp16,pvq2 --prompts ${PROMPTS:-512,2048} --rotation fused:256 \
  --profile > $OUT/prefill_pvq2_fused.txt 2>&1
echo "exit $?"; grep -E "^\||Error|error" $OUT/prefill_pvq2_fused.txt | cut -c1-300
say prefill_pvq2_fused
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_triton_launch.py tests/kernels/test_backend.py \
  tests/kernels/test_gated_hadamard.py tests/kernels/test_triton_rows.py tests/kernels/test_hadamard_kernel.py \
  > $OUT/launch_tests.txt 2>&1
echo "exit $?"; tail -3 $OUT/launch_tests.txt
say tests
