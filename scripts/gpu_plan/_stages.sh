# Sourced by the staged calls (0_quads.sh, 1_prefill.sh): the shell's settings, a clock, the GPU's name, run_stages.
set -u -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
# run_stages LIST: the functions stage_NAME of the comma-separated LIST in its order, once all are known
run_stages() {
  local order s
  IFS=, read -r -a order <<< "$1"
  for s in "${order[@]}"; do
    if ! declare -F "stage_$s" > /dev/null; then echo "no stage $s (the script's header lists them)"; exit 2; fi
  done
  for s in "${order[@]}"; do "stage_$s"; say "$s"; done
}
