# Sourced by the staged calls (0_quads.sh, 1_prefill.sh): the shell's settings, a clock, the GPU's name, run_stages.
set -u -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
# stage_build: the four CUDA extensions built side by side, whether each built and how long (a failed build only warns
# and the products fall back to Triton, so every GPU call's first line should say [True, True, True, True])
stage_build() {
  python3 -c "
import time; t=time.perf_counter()
from concurrent.futures import ThreadPoolExecutor
from pvq.kernels import cuda_leaf, cuda_hadamard, cuda_split
jobs = [cuda_leaf._rows_extension, cuda_hadamard._extension, cuda_leaf._extension, cuda_split._extension]
def build(f):
    t0 = time.perf_counter(); ok = f() is not None; return ok, round(time.perf_counter() - t0, 1)
with ThreadPoolExecutor(4) as p: done = list(p.map(build, jobs))
print('built', [ok for ok, _ in done], f'{time.perf_counter()-t:.1f} s; each (rows, hadamard, leaf, split):', [s for _, s in done])
import os; print('cores', os.cpu_count(), 'MAX_JOBS', os.environ.get('MAX_JOBS'))" 2>&1 | tail -4
}
# run_stages LIST: the functions stage_NAME of the comma-separated LIST in its order, once all are known
run_stages() {
  local order s
  IFS=, read -r -a order <<< "$1"
  for s in "${order[@]}"; do
    if ! declare -F "stage_$s" > /dev/null; then echo "no stage $s (the script's header lists them)"; exit 2; fi
  done
  for s in "${order[@]}"; do "stage_$s"; say "$s"; done
}
