"""``train(cfg)`` and ``evaluate(cfg)``: plain functions that the entry points and the tests call."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_info

from maskrcnn.training.auto_settings import resolve_auto_settings
from maskrcnn.training.third_party_noise import silence_third_party_noise
from maskrcnn.training.builders import (
    ConfigError,
    build_datamodule,
    build_module,
    build_trainer,
    resolve_ckpt_path,
)

log = logging.getLogger(__name__)


def _metrics(trainer: pl.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}


def train(cfg: DictConfig) -> tuple[dict[str, float], dict]:
    """Train (and by default validate the best checkpoint).

    Returns ``(metrics, objects)``: the last logged metrics and ``{"trainer", "module", "datamodule"}``.
    """
    silence_third_party_noise()
    pl.seed_everything(cfg.seed, workers=True)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.output_dir)
    datamodule = build_datamodule(cfg)
    resolve_auto_settings(cfg, datamodule)  # e.g. model.rpn.anchor_sizes=auto, before the model exists
    module = build_module(cfg)
    trainer = build_trainer(cfg)  # its RunSummary callback prints batch, LR and schedule at fit start
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = _metrics(trainer)
    if cfg.get("validate_after_train") and not trainer.fast_dev_run:
        ckpt = trainer.checkpoint_callback
        best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
        trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)
        metrics.update(_metrics(trainer))
        _print_coco_summary(module)
    return metrics, {"trainer": trainer, "module": module, "datamodule": datamodule}


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """COCO box/mask AP of ``cfg.ckpt_path`` on the validation split."""
    if not cfg.get("ckpt_path") or cfg.ckpt_path == "???":
        raise ConfigError("ckpt_path must point to a checkpoint (ckpt_path=outputs/.../checkpoints/last.ckpt)")
    silence_third_party_noise()
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, cfg.paths.output_dir)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    trainer = build_trainer(cfg)
    trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=True)
    _print_coco_summary(module)
    return _metrics(trainer)


def _print_coco_summary(module) -> None:
    """COCO summary (AP, AP50, AP75, APs/m/l for boxes and masks) and the per-category table."""
    if module.evaluator is None or not module.trainer.is_global_zero:
        return
    m = module.last_val_metrics
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    lines = [f"{'':5}" + "".join(f"{n:>8}" for n in names)]
    for kind in ("bbox", "segm"):
        lines.append(f"{kind:5}" + "".join(f"{m.get(f'{kind}_{n}', 0.0):8.3f}" for n in names))
    rank_zero_info("\n" + "\n".join(lines) + "\n\n" + module.evaluator.per_category_table())
