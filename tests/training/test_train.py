"""End-to-end: real training runs on synthetic data, evaluation, resume, DDP on CPU, precision."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from helpers.config import ROOT, compose
from helpers.nan_loss import make_mask_loss_nan
from maskrcnn.training.module import MaskRCNNModule
from maskrcnn.training.pipeline import evaluate, train

AP_KEYS = ["val/bbox_AP", "val/bbox_AP50", "val/bbox_AP75", "val/segm_AP", "val/segm_AP50", "val/segm_APs"]


def _train_losses(run_dir: Path) -> list[float]:
    rows = list(csv.DictReader(open(next(run_dir.rglob("metrics.csv")))))
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


def test_training_reduces_loss_and_reports_coco_ap(tiny, tiny_eval, shapes_dir, tmp_path):
    cfg = compose(
        [
            *tiny,
            "trainer.max_epochs=4",
            "callbacks=default",
            "callbacks.rich_progress_bar=null",
            "validate_after_train=true",
        ],
        output_dir=tmp_path,
        data_dir=shapes_dir,
    )
    metrics, objects = train(cfg)
    losses = _train_losses(tmp_path)
    assert len(losses) == 4 * 6  # 12 images / batch 2, 4 epochs, every step logged
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.8 * first, f"loss did not go down: {first:.3f} -> {last:.3f}"
    for key in AP_KEYS:
        assert key in metrics and 0.0 <= metrics[key] <= 1.0
    for term in ("loss_objectness", "loss_rpn_box", "loss_classifier", "loss_box", "loss_mask"):
        assert f"val/{term}" in metrics and f"train/{term}" in metrics
    assert metrics["train/images_per_sec"] > 0
    ckpt_dir = tmp_path / "checkpoints"
    assert (ckpt_dir / "last.ckpt").is_file()
    # The best checkpoint is re-evaluated by src/eval.py's code path to the same numbers.
    best = objects["trainer"].checkpoint_callback.best_model_path
    eval_cfg = compose(
        [*tiny_eval, f"ckpt_path={best}"], config_name="eval", output_dir=tmp_path / "eval", data_dir=shapes_dir
    )
    eval_metrics = evaluate(eval_cfg)
    for key in AP_KEYS:
        assert eval_metrics[key] == pytest.approx(metrics[key], abs=1e-9)
    # The checkpoint carries what predict needs.
    ckpt = torch.load(best, map_location="cpu", weights_only=False)
    assert ckpt["class_names"] == ["__background__", "square", "circle", "triangle"]
    assert ckpt["run_config"]["model"]["num_classes"] == 3


def _resume_cfg(tiny, tmp_path, shapes_dir, extra=()):
    return compose(
        [
            *tiny,
            "trainer.max_epochs=-1",
            "trainer.max_steps=8",
            "callbacks=default",
            "callbacks.rich_progress_bar=null",
            "callbacks.model_checkpoint.monitor=null",
            "callbacks.last_checkpoint.every_n_train_steps=1",
            "trainer.limit_val_batches=0",
            "validate_after_train=false",
            "scheduler.warmup_steps=5",
            *extra,
        ],
        output_dir=tmp_path,
        data_dir=shapes_dir,
    )


def test_resume_after_crash_matches_uninterrupted_run(tiny, shapes_dir, tmp_path, monkeypatch):
    _, ref = train(_resume_cfg(tiny, tmp_path / "ref", shapes_dir))
    ref_trainer = ref["trainer"]
    ref_lr = ref_trainer.optimizers[0].param_groups[0]["lr"]
    assert ref_trainer.global_step == 8

    class Crash(RuntimeError):
        pass

    def crash(self, batch, batch_idx):
        if self.global_step == 5:
            raise Crash("simulated crash at step 5")

    with monkeypatch.context() as m:
        m.setattr(MaskRCNNModule, "on_train_batch_start", crash)
        with pytest.raises(Crash):
            train(_resume_cfg(tiny, tmp_path / "crashed", shapes_dir))
    saved = torch.load(tmp_path / "crashed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 5

    _, resumed = train(_resume_cfg(tiny, tmp_path / "crashed", shapes_dir, ["ckpt_path=last"]))
    trainer = resumed["trainer"]
    assert trainer.global_step == ref_trainer.global_step
    assert trainer.current_epoch == ref_trainer.current_epoch
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(ref_lr, rel=1e-12)
    assert (
        trainer.lr_scheduler_configs[0].scheduler.last_epoch == ref_trainer.lr_scheduler_configs[0].scheduler.last_epoch
    )


def test_missing_resume_checkpoint_is_a_clear_error(tiny, shapes_dir, tmp_path):
    from maskrcnn.errors import ConfigError

    with pytest.raises(ConfigError, match="ckpt_path='last'.*last.ckpt does not exist"):
        train(_resume_cfg(tiny, tmp_path, shapes_dir, ["ckpt_path=last"]))


def test_nonfinite_loss_stops_naming_step_and_term(tiny, shapes_dir, tmp_path, monkeypatch):
    make_mask_loss_nan(monkeypatch)
    cfg = compose([*tiny, "validate_after_train=false"], output_dir=tmp_path, data_dir=shapes_dir)
    with pytest.raises(FloatingPointError, match=r"global step 0 .*loss_mask"):
        train(cfg)


def test_nonfinite_loss_skip_policy_skips_steps(tiny, shapes_dir, tmp_path, monkeypatch):
    make_mask_loss_nan(monkeypatch)
    cfg = compose(
        [
            *tiny,
            "nonfinite_loss=skip",
            "nonfinite_max_skip_fraction=1.0",
            "trainer.limit_val_batches=0",
            "validate_after_train=false",
        ],
        output_dir=tmp_path,
        data_dir=shapes_dir,
    )
    _, objects = train(cfg)
    assert objects["module"].skipped_steps == 6
    # No parameter ever received a gradient, so SGD never created a momentum buffer.
    assert all(p.grad is None for p in objects["module"].parameters())
    assert len(objects["trainer"].optimizers[0].state) == 0


def test_bf16_autocast_training_step_is_finite(tiny, shapes_dir, tmp_path):
    cfg = compose(
        [
            *tiny,
            "trainer.precision=bf16-mixed",
            "trainer.max_steps=2",
            "trainer.limit_val_batches=0",
            "validate_after_train=false",
        ],
        output_dir=tmp_path,
        data_dir=shapes_dir,
    )
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 2
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_gradient_accumulation_and_clipping(tiny, shapes_dir, tmp_path, capsys):
    cfg = compose(
        [
            *tiny,
            "trainer.accumulate_grad_batches=2",
            "trainer.gradient_clip_val=1.0",
            "trainer.limit_val_batches=0",
            "validate_after_train=false",
        ],
        output_dir=tmp_path,
        data_dir=shapes_dir,
    )
    _, objects = train(cfg)
    assert objects["trainer"].global_step == 3  # 6 batches / 2
    assert objects["module"].lr == pytest.approx(cfg.optimizer.lr_per_16_images * 4 / 16)  # batch 2 x accumulation 2


def test_wrong_num_classes_is_rejected_before_training(tiny, shapes_dir, tmp_path):
    cfg = compose([*tiny, "data.num_classes=5"], output_dir=tmp_path, data_dir=shapes_dir)
    with pytest.raises(ValueError, match=r"num_classes.*5.*3"):
        train(cfg)


def test_wandb_offline_logger_writes_a_run(tiny, shapes_dir, tmp_path):
    cfg = compose(
        [*tiny, "logger=wandb", "log_val_images=2", "trainer.limit_val_batches=1", "validate_after_train=false"],
        output_dir=tmp_path,
        data_dir=shapes_dir,
    )
    train(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs, "no offline W&B run directory written"
    # The validation images were logged as native W&B images (one key each) with mask layers
    # (predictions + ground truth); tests/test_wandb.py reads the run back in detail.
    pictures = list(runs[0].rglob("media/images/val/samples/*.png"))
    assert len(pictures) == 2, sorted(p.name for p in runs[0].rglob("*"))
    assert len(list(runs[0].rglob("media/images/mask/val/samples/*.mask.png"))) == 4


def test_ddp_two_processes_match_single_process_evaluation(tiny, tiny_eval, shapes_dir, tmp_path):
    """2 CPU processes (gloo) train and validate; AP equals a 1-process evaluation of the same
    checkpoint (5 val images: not divisible by the world size, each counted once)."""
    cfg = compose(
        [
            *tiny,
            "trainer=ddp_sim",
            "trainer.max_epochs=1",
            "callbacks=default",
            "callbacks.rich_progress_bar=null",
            "validate_after_train=false",
        ],
        output_dir=tmp_path,
        data_dir=shapes_dir,
    )
    train(cfg)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file()
    ddp = evaluate(
        compose(
            [*tiny_eval, "trainer=ddp_sim", f"ckpt_path={last}"],
            config_name="eval",
            output_dir=tmp_path / "e2",
            data_dir=shapes_dir,
        )
    )
    single = evaluate(
        compose([*tiny_eval, f"ckpt_path={last}"], config_name="eval", output_dir=tmp_path / "e1", data_dir=shapes_dir)
    )
    for key in AP_KEYS:
        assert ddp[key] == pytest.approx(single[key], abs=1e-9), key


def test_cli_ddp_subprocess_launcher_uses_one_run_dir(tiny, shapes_dir, tmp_path):
    """`strategy=ddp` (what trainer=ddp/multinode use) re-launches the script per rank; every rank
    must write into the one Hydra run directory, and rank 0 alone writes the checkpoints."""
    import subprocess
    import sys

    log_dir = tmp_path / "logs"
    cmd = [
        sys.executable,
        "src/train.py",
        *tiny,
        "trainer=ddp_sim",
        "trainer.strategy=ddp",
        "trainer.max_epochs=1",
        "callbacks=default",
        "callbacks.rich_progress_bar=null",
        "validate_after_train=false",
        f"paths.data_dir={shapes_dir}",
        f"paths.log_dir={log_dir}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dirs = [p for p in (log_dir / "train").iterdir() if p.is_dir()]
    assert len(run_dirs) == 1, run_dirs
    ckpts = sorted(p.name for p in (run_dirs[0] / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and len(ckpts) == 2, ckpts
