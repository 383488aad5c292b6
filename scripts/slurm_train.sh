#!/usr/bin/env bash
# Multi-node training on SLURM: one task per GPU; Lightning reads SLURM_* variables itself
# (no torchrun needed). Submit with:  sbatch scripts/slurm_train.sh experiment=coco_r50_1x
#SBATCH --job-name=maskrcnn
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
# SIGUSR1 two minutes before the time limit: Lightning's SLURM plugin saves hpc_ckpt_<n>.ckpt and
# requeues the job; SLURM's SIGTERM then stops training at the next step with checkpoints/last.ckpt
# (docs/checkpoints.md). The requeued job keeps its id, hence its run directory, and resumes.
#SBATCH --signal=USR1@120
#SBATCH --requeue
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
# Every task must write into the same Hydra run directory.
RUN_DIR=outputs/train/slurm-${SLURM_JOB_ID:-local}
RESUME=()
if [ -f "$RUN_DIR/checkpoints/last.ckpt" ]; then RESUME=(ckpt_path=last); fi  # a requeued job
srun .venv/bin/python src/train.py trainer=multinode \
  trainer.num_nodes="${SLURM_JOB_NUM_NODES:-2}" trainer.devices="${SLURM_NTASKS_PER_NODE:-8}" \
  hydra.run.dir="$RUN_DIR" ${RESUME[@]+"${RESUME[@]}"} "$@"
