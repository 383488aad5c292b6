"""What a user sees in a redirected log (nohup, SLURM, CI): progress lines, AP lines, no third-party noise."""

import re
import subprocess
import sys

from helpers.config import ROOT

NOISE = (
    "LeafSpec",  # torch's pytree deprecation, from Lightning
    "💡 Tip",  # Lightning's litlogger / litmodels adverts
    "anonymous setting has no effect",  # wandb, from Lightning's WandbLogger arguments
    "Images sizes do not match",  # wandb, mixed-size images under one key
)


def test_redirected_run_prints_progress_and_ap_lines_and_no_noise(tiny, shapes_dir, tmp_path):
    # the default trainer settings as a user gets them (the tiny overrides switch the model summary off)
    overrides = [
        o
        for o in tiny
        if not o.startswith(("logger=", "callbacks=", "log_val_images=", "trainer.enable_model_summary"))
    ]
    cmd = [
        sys.executable,
        "src/train.py",
        *overrides,
        "logger=wandb",
        "callbacks=default",
        "log_val_images=2",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=4",
        "callbacks.progress_log.every_n_steps=2",
        "callbacks.progress_log.every_n_seconds=0",
        f"paths.data_dir={shapes_dir}",
        f"hydra.run.dir={tmp_path}",
    ]
    # stdout is a pipe, not a terminal: the "auto" progress lines must appear.
    # wandb as a user has it: not silenced (conftest silences it for the other tests)
    env = {k: v for k, v in __import__("os").environ.items() if k != "WANDB_SILENT"}
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env={**env, "WANDB_MODE": "offline"}
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    progress = [line.split(" - ", 1)[1] for line in out.splitlines() if "maskrcnn.progress" in line]
    steps = [p for p in progress if p.startswith("step ")]
    assert [p.split()[1].split("/")[0] for p in steps] == ["2", "4", "6", "8"]
    assert all("loss" in p and "lr" in p and "img/s" in p and "ETA" in p for p in steps)
    assert sum(p.startswith("validation (epoch") for p in progress) == 2  # one per epoch
    assert "validation of the checkpoint best.ckpt: bbox AP" in out, out[-3000:]
    assert re.search(r"Scored: checkpoints/best\.ckpt \(epoch \d, step \d+, val/segm_AP [0-9.]+\)", out), out[-3000:]
    assert "Run summary" in out and "Dataset fit report" in out
    assert re.search(r"  model +resnet18 \+ FPN .*; [0-9.]+ M parameters, [0-9.]+ M trainable", out), out[:3000]
    assert "Total FLOPs" not in out and "┏" not in out  # no Lightning summary table (its FLOPs read 0)
    assert "\x1b[" not in out, "colour codes in a redirected log"  # wandb's closing lines (cli.finish_wandb_run)
    assert "You can sync this run" in out  # the W&B run was closed by the entry point, lines plain
    for noise in NOISE:
        assert noise not in out, f"third-party noise in the log: {noise!r}"
