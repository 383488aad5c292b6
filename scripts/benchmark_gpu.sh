#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md in one run on one GPU machine (each step independent: one that
# fails or runs out of time does not stop the others; the log says which):
#   1. the CUDA tests (tests/losses/test_losses.py's cuda cases),
#   2. train step + inference, ours vs torchvision, same trained-like weights, AMP bf16, 800x800,
#      R50-FPN and R101-FPN, batch 2 and 8, channels_last on/off,
#   3. the shapes demo trained on the GPU (trainer=gpu, its default 16-mixed), then src/predict.py
#      with inference=fast on its checkpoint,
#   4. the data pipeline's images/s per worker on this machine's CPU,
#   5. the torch.compile rows (R50-FPN, batch 8 by default), given whatever time is left of $BUDGET_S.
#
#   bash scripts/benchmark_gpu.sh [OUT_DIR]          # PYTHON=python3 BUDGET_S=540 by default
#   STAGES="compile" COMPILE_ARCHS="resnet50 resnet101" COMPILE_BATCH="2 8" bash scripts/benchmark_gpu.sh OUT
#       (only the compile rows, for every arch and batch; STAGES picks any of
#        tests model demo predict data compile)
set -u
out=${1:-outputs/benchmark_gpu}
py=${PYTHON:-python3}
budget=${BUDGET_S:-540}
stages=" ${STAGES:-tests model demo predict data compile} "
mkdir -p "$out"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline HYDRA_FULL_ERROR=1
start=$SECONDS
log() { echo "=== $* (t=$((SECONDS - start)) s)"; }
left() { echo $((budget - (SECONDS - start))); }
step() {  # step STAGE NAME SECONDS CMD...: run CMD under a time limit if STAGE is chosen
  local stage=$1 name=$2 limit=$3; shift 3
  if [[ $stages != *" $stage "* ]]; then log "$name: skipped (STAGES)"; return; fi
  log "$name: start (limit $limit s)"
  timeout --signal=INT --kill-after=15 "$limit" "$@"
  log "$name: exit $?"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/env.txt"
$py -c "import torch, torchvision, pytorch_lightning as pl; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, 'lightning', pl.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
  | tee -a "$out/env.txt"
nproc | sed 's/^/cpu cores: /' | tee -a "$out/env.txt"

step tests "cuda tests" 90 $py -m pytest -q -p no:cacheprovider tests/losses/test_losses.py -k cuda -rA
step model "model eager" 200 $py scripts/benchmark.py --task model --device cuda --amp bf16 --archs resnet50 resnet101 \
  --sizes 800 --batch 2 8 --iters 10 --warmup 3 --trained-like --threads 8 --out "$out/model.md"
step demo "shapes demo on the GPU" 150 $py src/train.py trainer=gpu logger=csv hydra.run.dir=outputs/gpu_demo
ckpt=outputs/gpu_demo/checkpoints/last.ckpt
step predict "predict inference=fast" 60 $py src/predict.py ckpt_path=$ckpt "input=data/shapes/val/00000*.png" \
  output=outputs/gpu_predict/predictions inference=fast device=cuda hydra.run.dir=outputs/gpu_predict
step data "data pipeline per worker" 60 $py scripts/benchmark.py --task data --threads 1 --out "$out/data.md"
# shellcheck disable=SC2086  # word splitting of the arch / batch lists is intended
step compile "model compile" $(( $(left) - 20 )) $py scripts/benchmark.py --task model --device cuda --amp bf16 \
  --archs ${COMPILE_ARCHS:-resnet50} --sizes 800 --batch ${COMPILE_BATCH:-8} --iters 10 --warmup 3 --trained-like \
  --threads 8 --model-compile \
  --out "$out/compile.md"
log "done"
