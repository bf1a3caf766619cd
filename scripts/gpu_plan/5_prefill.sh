#!/usr/bin/env bash
# Call 5: the four CUDA extensions built in parallel, then the prefill of the 7B-shaped Llama (512 and 2048 tokens),
# fp16, int4, pvq3 and pvq2, each row with its kernels' GPU time and the host's time to launch it (--profile; docs/
# kernels.md, session 26). METHODS (default fp16,int4,pvq3,pvq2), PROMPTS (default 512,2048), ROTATION (default auto:
# each method's plan; layer, fused:256), LIMIT (default 300 s).
set -u -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -c "
import time; t=time.perf_counter()
from concurrent.futures import ThreadPoolExecutor
from pvq.kernels import cuda_leaf, cuda_hadamard, cuda_split
jobs = [cuda_leaf._rows_extension, cuda_hadamard._extension, cuda_leaf._extension, cuda_split._extension]
with ThreadPoolExecutor(4) as p: print('built', list(p.map(lambda f: f() is not None, jobs)), f'{time.perf_counter()-t:.1f} s')" 2>&1 | tail -3
say built
ROTATION=${ROTATION:-auto}
LOG=$OUT/prefill_${ROTATION//:/-}.txt  # names that come back from $OUT: letters, digits, '.', '_', '-'
timeout ${LIMIT:-300} python3 benchmarks/prefill.py --methods ${METHODS:-fp16,int4,pvq3,pvq2} \
  --prompts ${PROMPTS:-512,2048} --rotation $ROTATION --profile > $LOG 2>&1
echo "exit $?"
grep -E "profile,|synchronizing|^\||Error|error|skipped" $LOG | cut -c1-300
say prefill
