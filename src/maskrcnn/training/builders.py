"""Turn a composed Hydra config into objects. The only place (with ``pipeline.py``) that reads ``cfg``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from maskrcnn.training.module import MaskRCNNModule

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the config key."""


def _num_devices(trainer_cfg: DictConfig) -> int:
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, int) and devices > 0:
        return devices
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str) and devices.isdigit():
        return int(devices)
    # "auto" / -1: every visible accelerator, or one process on CPU.
    if trainer_cfg.get("accelerator") in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 1


def effective_batch_size(cfg: DictConfig) -> int:
    """Images per optimizer step over all processes: batch x devices x nodes x accumulation."""
    return (
        int(cfg.data.batch_size)
        * _num_devices(cfg.trainer)
        * int(cfg.trainer.get("num_nodes", 1))
        * int(cfg.trainer.get("accumulate_grad_batches", 1))
    )


def scaled_lr(cfg: DictConfig) -> float:
    """Linear scaling rule (Goyal et al. 2017): lr grows with the effective batch size."""
    return float(cfg.optimizer.lr_per_16_images) * effective_batch_size(cfg) / 16.0


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    if cfg.data.get("num_classes") in (None, "???"):
        raise ConfigError("data.num_classes must be set (number of foreground categories in the dataset)")
    return instantiate(cfg.data, _convert_="all")


def build_module(cfg: DictConfig) -> MaskRCNNModule:
    net = instantiate(cfg.model, _convert_="all")
    criterion = instantiate(cfg.loss.criterion)
    # The eval config has no optimizer/scheduler groups (an experiment may still set a few keys).
    training = "fn" in cfg.get("optimizer", {})
    optimizer = instantiate(cfg.optimizer.fn) if training else None
    scheduler = instantiate(cfg.scheduler) if "_target_" in cfg.get("scheduler", {}) else None
    module = MaskRCNNModule(
        net=net,
        criterion=criterion,
        loss_weights=OmegaConf.to_container(cfg.loss.weights),
        optimizer=optimizer,
        scheduler=scheduler,
        lr=scaled_lr(cfg) if training else 0.0,
        nonfinite_loss=cfg.get("nonfinite_loss", "raise"),
        eval_backend=cfg.get("eval_backend", "faster_coco_eval"),
    )
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    return module


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    if cfg.get("log_val_images", 0):
        from maskrcnn.training.callbacks import ValidationImageLogger

        callbacks.append(ValidationImageLogger(num_images=int(cfg.log_val_images)))
    if "optimizer" in cfg and "fn" in cfg.optimizer:  # training runs only
        from maskrcnn.training.run_summary import RunSummary, describe_config

        output_dir = cfg.paths.get("output_dir")
        callbacks.append(RunSummary(describe_config(cfg), output_dir, fit_report=bool(cfg.get("dataset_report", True))))
    dashboard = (cfg.get("logger") or {}).get("wandb_dashboard")  # conf/logger/wandb.yaml
    if dashboard:
        from maskrcnn.training.wandb_dashboard import WandbDashboard

        callbacks.append(WandbDashboard(**dashboard))
    return callbacks


def build_loggers(cfg: DictConfig) -> list:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]


def build_trainer(cfg: DictConfig, **overrides) -> pl.Trainer:
    loggers = build_loggers(cfg)
    return instantiate(
        cfg.trainer, callbacks=build_callbacks(cfg), logger=loggers or False, **overrides
    )


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """``"last"`` means ``<output_dir>/checkpoints/last.ckpt``; any path must exist."""
    if ckpt_path in (None, ""):
        return None
    path = Path(output_dir) / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        hint = " (run again with hydra.run.dir=<the crashed run's directory>)" if ckpt_path == "last" else ""
        raise ConfigError(f"ckpt_path={ckpt_path!r}: checkpoint file {path} does not exist{hint}")
    return str(path)
