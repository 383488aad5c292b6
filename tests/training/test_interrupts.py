"""Signals stop training at a step with a resumable checkpoint, one line and a non-zero exit status;
resuming from it gives the run that was never interrupted (weights, learning rates, data order)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from helpers.config import ROOT, TINY, compose
from helpers.step_recorder import read_steps
from maskrcnn.training.interrupts import TrainingInterrupted
from maskrcnn.training.pipeline import train

# 12 images at batch 2: 6 steps per epoch; 8 steps end mid-epoch 2. No validation (speed). Random
# scale and flip on: each image's augmentation is seeded by (data seed, epoch, index).
RUN = [
    *TINY,
    "trainer.max_epochs=2",
    "trainer.max_steps=8",
    "callbacks=default",
    "callbacks.rich_progress_bar=null",
    "callbacks.progress_log=null",
    "trainer.limit_val_batches=0",
    "validate_after_train=false",
    "augmentation=multiscale",
    "scheduler.warmup_steps=5",
    "logger=none",
    "dataset_report=false",
]
EXIT = {"SIGINT": 130, "SIGTERM": 143, "SIGUSR1": 138}


def _recorder(path, signal_at_step=None, signal_name="SIGTERM") -> list[str]:
    extra = [f"+callbacks.recorder.signal_at_step={signal_at_step}", f"+callbacks.recorder.signal_name={signal_name}"]
    return [
        "+callbacks.recorder._target_=helpers.step_recorder.StepRecorder",
        f"+callbacks.recorder.path={path}",
        *(extra if signal_at_step is not None else []),
    ]


def _run_cli(run_dir, shapes_dir, overrides, **env_extra: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),
        OMP_NUM_THREADS="2",
        HYDRA_FULL_ERROR="0",
        **env_extra,
    )
    cmd = [sys.executable, "src/train.py", *RUN, *overrides, f"paths.data_dir={shapes_dir}", f"hydra.run.dir={run_dir}"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=550, check=False)


def _ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_sigterm_mid_epoch_then_resume_equals_uninterrupted_run(shapes_dir, tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    train(compose([*RUN, *_recorder(tmp_path / "ref.jsonl")], output_dir=ref_dir, data_dir=shapes_dir))

    proc = _run_cli(run_dir, shapes_dir, _recorder(tmp_path / "run.jsonl", signal_at_step=3))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 143, out[-3000:]
    lines = [line for line in out.splitlines() if "stopped by SIGTERM" in line]
    assert len(lines) == 1, out[-3000:]
    assert re.search(
        r"stopped by SIGTERM at step 3 of 8 \(epoch 1 of 2\); resume: python src/train\.py .*"
        rf"ckpt_path=last hydra\.run\.dir={re.escape(str(run_dir))}$",
        lines[0],
    ), lines[0]
    saved = _ckpt(run_dir / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 3 and saved["epoch"] == 0
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"batches_done": 3}]
    assert not (run_dir / "run.lock").exists()  # released at exit

    resume = [*RUN, *_recorder(tmp_path / "run.jsonl"), "ckpt_path=last"]
    train(compose(resume, output_dir=run_dir, data_dir=shapes_dir))
    ref, resumed = read_steps(tmp_path / "ref.jsonl"), read_steps(tmp_path / "run.jsonl")
    assert [r["step"] for r in resumed] == list(range(8))  # nothing replayed, nothing skipped
    assert [r["image_ids"] for r in resumed] == [r["image_ids"] for r in ref]
    assert [r["epoch"] for r in resumed] == [r["epoch"] for r in ref]
    assert [r["lr"] for r in resumed] == pytest.approx([r["lr"] for r in ref], rel=1e-12)
    final_ref, final = _ckpt(ref_dir / "checkpoints" / "last.ckpt"), _ckpt(run_dir / "checkpoints" / "last.ckpt")
    assert final["global_step"] == final_ref["global_step"] == 8
    for name, tensor in final_ref["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    momentum = final["optimizer_states"][0]["state"]
    for key, state in final_ref["optimizer_states"][0]["state"].items():
        torch.testing.assert_close(momentum[key]["exp_avg"], state["exp_avg"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGINT", "SIGUSR1"])
def test_sigint_and_sigusr1_stop_with_a_checkpoint_of_that_step(name, shapes_dir, tmp_path):
    recorder = _recorder(tmp_path / "steps.jsonl", signal_at_step=2, signal_name=name)
    proc = _run_cli(tmp_path / "run", shapes_dir, recorder)
    out = proc.stdout + proc.stderr
    assert proc.returncode == EXIT[name], out[-3000:]
    assert len(re.findall(rf"stopped by {name} at step 2 of 8 \(epoch 1 of 2\); resume: ", out)) == 1, out[-3000:]
    assert _ckpt(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 2


@pytest.mark.slow
def test_sigkill_loses_only_the_steps_since_the_periodic_checkpoint(shapes_dir, tmp_path):
    proc = _run_cli(
        tmp_path / "run",
        shapes_dir,
        ["callbacks.last_checkpoint.every_n_train_steps=2", *_recorder(tmp_path / "s.jsonl", 5, "SIGKILL")],
    )
    assert proc.returncode == -signal.SIGKILL
    assert _ckpt(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert not list((tmp_path / "run" / "checkpoints").glob("*.partial"))


def test_slurm_sigusr1_saves_and_requeues_then_slurms_sigterm_stops_with_last_ckpt(shapes_dir, tmp_path):
    """Inside an sbatch job (SLURM_* variables) SIGUSR1 is Lightning's: hpc_ckpt + ``scontrol requeue``.

    The fake ``scontrol`` records its arguments and, as SLURM does when it requeues a running job,
    sends the job SIGTERM; the run then stops at the next step with last.ckpt and exit status 143.
    """
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.txt"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nkill -TERM $PPID\n')
    scontrol.chmod(0o755)
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "maskrcnn",
        "SLURM_NODELIST": "localhost",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    run_dir = tmp_path / "run"
    proc = _run_cli(run_dir, shapes_dir, _recorder(tmp_path / "s.jsonl", 2, "SIGUSR1"), **slurm)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 143, out[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    hpc = list(run_dir.rglob("hpc_ckpt_*.ckpt"))
    assert len(hpc) == 1 and _ckpt(hpc[0])["global_step"] == 2, out[-3000:]
    lines = [line for line in out.splitlines() if "stopped by SIGTERM" in line]
    assert len(lines) == 1 and "ckpt_path=last" in lines[0], out[-3000:]
    assert "stopped by SIGUSR1" not in out  # SIGUSR1 was Lightning's, not a stop
    assert _ckpt(run_dir / "checkpoints" / "last.ckpt")["global_step"] in (2, 3)


def test_sigterm_during_validation_then_resume_equals_uninterrupted_run(shapes_dir, tmp_path):
    """Stopped in the validation after the epoch's last step: the resumed run starts the next epoch
    with the random states the uninterrupted one had there (its loader draws its seed after them)."""
    with_val = [o for o in RUN if o != "trainer.limit_val_batches=0"] + ["trainer.limit_val_batches=1"]
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    train(compose([*with_val, *_recorder(tmp_path / "ref.jsonl")], output_dir=ref_dir, data_dir=shapes_dir))
    stop = [*_recorder(tmp_path / "run.jsonl", 6), "+callbacks.recorder.signal_in_validation=true"]
    with pytest.raises(TrainingInterrupted):
        train(compose([*with_val, *stop], output_dir=run_dir, data_dir=shapes_dir))
    assert _ckpt(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 6
    resume = [*with_val, *_recorder(tmp_path / "run.jsonl"), "ckpt_path=last"]
    train(compose(resume, output_dir=run_dir, data_dir=shapes_dir))
    ref, resumed = read_steps(tmp_path / "ref.jsonl"), read_steps(tmp_path / "run.jsonl")
    assert [r["image_ids"] for r in resumed] == [r["image_ids"] for r in ref]
    final_ref, final = _ckpt(ref_dir / "checkpoints" / "last.ckpt"), _ckpt(run_dir / "checkpoints" / "last.ckpt")
    assert final["global_step"] == final_ref["global_step"] == 8
    for name, tensor in final_ref["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
