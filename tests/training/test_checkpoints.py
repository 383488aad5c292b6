"""last.ckpt is the newest state whatever the metric did; best.ckpt is separate; ckpt_path=last|best name them."""

from __future__ import annotations

import logging

import pytest
import torch

from helpers.config import TINY, compose
from maskrcnn.errors import ConfigError
from maskrcnn.run_checkpoint import resolve_ckpt_path
from maskrcnn.training.pipeline import train

BASE = [*TINY, "callbacks=default", "callbacks.rich_progress_bar=null", "logger=none", "dataset_report=false"]


def _ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_last_holds_the_final_step_when_the_metric_never_improves(shapes_dir, tmp_path, caplog):
    # monitor "epoch" in mode min: epoch 0 is the best, every later validation is worse
    cfg = compose(
        [
            *BASE,
            "trainer.max_epochs=3",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "callbacks.model_checkpoint.monitor=epoch",
            "callbacks.model_checkpoint.mode=min",
            "validate_after_train=true",
        ],
        output_dir=tmp_path,
        data_dir=shapes_dir,
    )
    with caplog.at_level(logging.INFO):
        train(cfg)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "last.ckpt"]
    last, best = _ckpt(folder / "last.ckpt"), _ckpt(folder / "best.ckpt")
    assert (last["global_step"], last["epoch"]) == (6, 2)
    assert (best["global_step"], best["epoch"]) == (2, 0)
    assert resolve_ckpt_path("last", tmp_path) == str(folder / "last.ckpt")
    assert resolve_ckpt_path("best", tmp_path) == str(folder / "best.ckpt")
    # the final AP table names the file it scored
    assert "Scored: checkpoints/best.ckpt (epoch 0, step 2" in caplog.text


def test_last_is_written_at_the_end_of_training_mid_epoch_without_validation(shapes_dir, tmp_path):
    cfg = compose(
        [
            *BASE,
            "trainer.max_epochs=-1",
            "trainer.max_steps=3",
            "trainer.limit_val_batches=0",
            "validate_after_train=false",
        ],
        output_dir=tmp_path,
        data_dir=shapes_dir,
    )
    train(cfg)
    last = _ckpt(tmp_path / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 3
    assert last["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"batches_done": 3}]
    assert not (tmp_path / "checkpoints" / "best.ckpt").exists()  # no validation, no metric


def test_named_checkpoint_that_does_not_exist_is_one_error(tmp_path):
    with pytest.raises(ConfigError, match=r"ckpt_path='best': checkpoint file .*best\.ckpt does not exist"):
        resolve_ckpt_path("best", tmp_path)
