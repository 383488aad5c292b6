"""Documented run options end to end: every logger choice works with the default callbacks, and
``nonfinite_loss=skip`` stops a run that skips too many steps and reports what it skipped."""

from __future__ import annotations

import csv
import logging

import pytest
import torch

from helpers.config import compose
from helpers.nan_loss import make_mask_loss_nan
from maskrcnn.errors import NonFiniteLossError
from maskrcnn.training.module import MaskRCNNModule
from maskrcnn.training.nonfinite import SkipLimit
from maskrcnn.training.pipeline import train

# The default callbacks (checkpointing, progress lines), without the terminal progress bar.
CALLBACKS = [
    "callbacks=default",
    "callbacks.rich_progress_bar=null",
    "trainer.max_steps=3",
    "trainer.limit_val_batches=1",
    "validate_after_train=false",
]


def test_logger_none_trains_without_the_callbacks_that_need_a_logger(tiny, shapes_dir, tmp_path, caplog):
    lr_monitor = "+callbacks.lr_monitor._target_=pytorch_lightning.callbacks.LearningRateMonitor"  # a user's addition
    cfg = compose(
        [*tiny, *CALLBACKS, lr_monitor, "logger=none", "log_val_images=2"], output_dir=tmp_path, data_dir=shapes_dir
    )
    with caplog.at_level(logging.INFO):
        metrics, objects = train(cfg)
    trainer = objects["trainer"]
    assert trainer.global_step == 3 and not trainer.loggers
    assert "leaving out the callbacks that need one: LearningRateMonitor, ValidationImageLogger" in caplog.text
    assert trainer.checkpoint_callback is not None and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_logger_csv_logs_the_lr_every_step_under_a_stage_name_key(tiny, shapes_dir, tmp_path):
    cfg = compose([*tiny, *CALLBACKS, "logger=csv"], output_dir=tmp_path, data_dir=shapes_dir)
    train(cfg)
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    lrs = [float(r["train/lr"]) for r in rows if r.get("train/lr")]
    assert len(lrs) == 3 and lrs[0] < lrs[-1]  # logged every step, rising during warm-up
    assert all("/" in key or key in ("epoch", "step") for key in rows[0]), sorted(rows[0])


def test_skip_limit_counts_over_a_window():
    limit = SkipLimit(max_fraction=0.2, window=10, min_skipped=3)
    for step in range(30):  # one skip in every 5 steps: exactly 20%, tolerated
        limit.record(step % 5 == 0)
    assert (limit.total_skipped, limit.total_steps) == (6, 30)
    assert limit.summary() == "nonfinite_loss=skip: skipped 6 of 30 training steps (20.0%) for a non-finite loss"
    limit = SkipLimit(max_fraction=0.2, window=10, min_skipped=3)
    limit.record(True)
    limit.record(True)  # 2 of 2, but fewer than min_skipped
    with pytest.raises(NonFiniteLossError, match=r"3 of the last 3 training steps .*\(3 of 3 in this run\) at step 2"):
        limit.record(True, where="step 2")
    never = SkipLimit(max_fraction=1.0, window=10, min_skipped=1)
    for _ in range(20):
        never.record(True)
    with pytest.raises(ValueError, match="nonfinite_max_skip_fraction"):
        SkipLimit(max_fraction=1.5)


def test_a_run_skipping_most_steps_stops_naming_the_count(tiny, shapes_dir, tmp_path, monkeypatch):
    make_mask_loss_nan(monkeypatch)
    cfg = compose(
        [*tiny, "nonfinite_loss=skip", "trainer.limit_val_batches=0", "validate_after_train=false"],
        output_dir=tmp_path,
        data_dir=shapes_dir,
    )
    with pytest.raises(
        NonFiniteLossError,
        match=r"5 of the last 5 training steps had a non-finite loss.*"
        r"nonfinite_max_skip_fraction=0\.2",
    ):
        train(cfg)


def test_a_run_skipping_few_steps_finishes_with_a_summary(tiny, shapes_dir, tmp_path, monkeypatch, caplog):
    weighted, calls = MaskRCNNModule._weighted, []

    def every_third_nan(self, terms):
        calls.append(1)
        loss = weighted(self, terms)
        return loss * float("nan") if len(calls) % 3 == 1 else loss

    monkeypatch.setattr(MaskRCNNModule, "_weighted", every_third_nan)
    # 2 of 6 steps: above the 20% share, but below the default minimum of 5 skipped steps.
    cfg = compose(
        [*tiny, "nonfinite_loss=skip", "trainer.limit_val_batches=0", "validate_after_train=false"],
        output_dir=tmp_path,
        data_dir=shapes_dir,
    )
    with caplog.at_level(logging.INFO):
        _, objects = train(cfg)
    assert objects["module"].skipped_steps == 2
    assert "nonfinite_loss=skip: skipped 2 of 6 training steps (33.3%) for a non-finite loss" in caplog.text


def test_small_data_recipe_trains_and_validates_by_steps(tiny, shapes_dir, tmp_path):
    """experiment=small_data end to end (tiny sizes): AdamW + cosine steps, fitted anchors, validation
    by step count; the run summary names what the recipe chose."""
    steps = [
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "scheduler.warmup_steps=2",
    ]
    cfg = compose(
        ["experiment=small_data", *tiny, *steps, "augmentation.multiscale_sizes=[56,64]", "augmentation.max_size=64"],
        output_dir=tmp_path,
        data_dir=shapes_dir,
    )
    metrics, objects = train(cfg)
    trainer = objects["trainer"]
    assert trainer.global_step == 4
    assert type(trainer.optimizers[0]).__name__ == "AdamW"
    assert objects["module"].net.rpn.anchor_generator.sizes != ((32,), (64,), (128,), (256,), (512,))
    assert "val/segm_AP" in metrics
    summary = (tmp_path / "run_summary.txt").read_text()
    assert "AdamW" in summary
