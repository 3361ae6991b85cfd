#!/usr/bin/env bash
# One call of the GPU machine, as run for bench/RESULTS.md (wheels from bench/device_wheels.sh, carried in .whl).
#   bash bench/device_run.sh check   # gpu_check.py (issue 15) + pipeline_gpu.py (generation speed); the
#                                    # HPSv2 path is SKIP here (open_clip rides in the speed call: the three
#                                    # wheel sets and the tree together pass the 64 MiB a call carries)
#   bash bench/device_run.sh speed   # train_step.py (reward overhead, memory) + flux_gpu.py + mllm_gpu.py
#   bash bench/device_run.sh mini    # mini_gpu.py: the mini VAE + UNet candidates on the GPU (issue 17);
#                                    # $OUT gets one tar per model (fp16), their logs and summary.json
# Each script has its own time limit so the call ends inside the device's 10-minute command limit.
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:?check, speed or mini}
sets="common serve"
[ "$what" = speed ] && sets="common clip"
[ "$what" = mini ] && sets="common"
wheels=$(for s in $sets; do ls .whl/"$s"/*.whl; done)
# shellcheck disable=SC2086
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $wheels \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/icg-device-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, transformers, diffusers; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'diffusers', diffusers.__version__, 'cuda', torch.version.cuda)"
run() {  # run SECONDS NAME ARGS...: one script, its log and JSON under $OUT
  local limit=$1 name=$2
  shift 2
  echo "=== $name (limit ${limit} s) ==="
  timeout "$limit" python3 "bench/$name.py" "$@" --out "$OUT/$name.json" 2>&1 | grep -v 'it/s]' \
    | tee "$OUT/$name.log"
  echo "=== $name: exit ${PIPESTATUS[0]} ==="
}
case $what in
  check)
    run 240 gpu_check --device cuda
    run 190 pipeline_gpu --reps 2 ;;
  speed)
    run 140 train_step --gpu --budget-s 100
    run 150 flux_gpu --sizes 512 --batches 1
    run 50 mllm_gpu --batches 16 --no-compile --profile --reps 1 ;;
  mini)  # budgets in the recipe (VAE 1.8 min, UNets 3.5 min side by side); the rest: render, probes, packing
    timeout 560 python3 bench/mini_gpu.py --out "$OUT" --device cuda 2>&1 | grep -v 'it/s]'
    echo "=== mini_gpu: exit ${PIPESTATUS[0]} ===" ;;
  *) echo "unknown: $what"; exit 2 ;;
esac
