"""Turn a composed Hydra config into objects. The only place (with ``pipeline.py``) that reads ``cfg``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from maskrcnn.errors import ConfigError
from maskrcnn.inference.slice_options import slice_options
from maskrcnn.training import config_checks as checks
from maskrcnn.training.module import MaskRCNNModule

if TYPE_CHECKING:
    from maskrcnn.data.datamodule import CocoDataModule

log = logging.getLogger(__name__)

# Callbacks that raise without a logger (Lightning: "Cannot use LearningRateMonitor callback with
# Trainer that has no logger"); our own declare it with a ``requires_logger = True`` attribute.
_NEED_A_LOGGER = (pl.callbacks.LearningRateMonitor, pl.callbacks.DeviceStatsMonitor)


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
    checks.check_trainer(cfg.trainer)
    return (
        checks.positive_int(cfg.data.batch_size, "data.batch_size")
        * _num_devices(cfg.trainer)
        * int(cfg.trainer.get("num_nodes", 1))
        * int(cfg.trainer.get("accumulate_grad_batches", 1))
    )


def scaled_lr(cfg: DictConfig) -> float:
    """Linear scaling rule (Goyal et al. 2017): lr grows with the effective batch size."""
    lr_per_16 = checks.positive_float(cfg.optimizer.lr_per_16_images, "optimizer.lr_per_16_images")
    return lr_per_16 * effective_batch_size(cfg) / 16.0


def build_datamodule(cfg: DictConfig) -> CocoDataModule:
    checks.check_num_classes(cfg.data.get("num_classes"))
    checks.positive_int(cfg.data.get("batch_size", 1), "data.batch_size")
    return instantiate(cfg.data, _convert_="all")


def build_module(cfg: DictConfig) -> MaskRCNNModule:
    # The eval config has no optimizer/scheduler groups (an experiment may still set a few keys).
    training = "fn" in cfg.get("optimizer", {})
    lr = scaled_lr(cfg) if training else 0.0  # checks batch size and LR before the model is built
    checks.check_model_matches_data_classes(cfg.model.get("num_classes"), cfg.get("data", {}).get("num_classes"))
    checks.check_transform_sizes(cfg.model.get("transform"))
    net = instantiate(cfg.model, _convert_="all")
    criterion = instantiate(cfg.loss.criterion)
    optimizer = instantiate(cfg.optimizer.fn) if training else None
    scheduler = instantiate(cfg.scheduler) if "_target_" in cfg.get("scheduler", {}) else None
    module = MaskRCNNModule(
        net=net,
        criterion=criterion,
        loss_weights=cast(dict, OmegaConf.to_container(cfg.loss.weights)),
        optimizer=optimizer,
        scheduler=scheduler,
        lr=lr,
        nonfinite_loss=cfg.get("nonfinite_loss", "raise"),
        eval_backend=cfg.get("eval_backend", "faster_coco_eval"),
        nonfinite_max_skip_fraction=cfg.get("nonfinite_max_skip_fraction", 0.2),
        nonfinite_skip_window=cfg.get("nonfinite_skip_window", 100),
        nonfinite_min_skipped=cfg.get("nonfinite_min_skipped", 5),
        slicing=slice_options((cfg.get("inference") or {}).get("slice")),
    )
    module.run_config = cast(dict, OmegaConf.to_container(cfg, resolve=True))
    return module


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    configured = cfg.get("callbacks") or {}
    for name, c in configured.items():  # e.g. +callbacks.ema.decay=0.99 without callbacks=ema
        if c and "_target_" not in c:
            hint = "; choose callbacks=ema to turn EMA on" if name == "ema" else ""
            raise ConfigError(f"callbacks.{name} has no _target_ (what to build){hint}")
    callbacks = [instantiate(c) for c in configured.values() if c]
    if cfg.get("log_val_images", 0):
        from maskrcnn.training.callbacks import ValidationImageLogger

        callbacks.append(ValidationImageLogger(num_images=int(cfg.log_val_images)))
    if "optimizer" in cfg and "fn" in cfg.optimizer:  # training runs only
        from maskrcnn.training.run_summary import RunSummary, describe_config

        output_dir = cfg.paths.get("output_dir")
        callbacks.append(RunSummary(describe_config(cfg), output_dir, fit_report=bool(cfg.get("dataset_report", True))))
        # warn when the batch the LR is scaled for cannot be filled by the training set
        callbacks.append(
            checks.BatchFitsDatasetCheck(int(cfg.data.batch_size), effective_batch_size(cfg), scaled_lr(cfg))
        )
        from maskrcnn.training.checkpoints import RandomStateResume
        from maskrcnn.training.interrupts import StopOnSignal

        callbacks += [RandomStateResume(), StopOnSignal(Path(output_dir) / "checkpoints" / "last.ckpt")]
    dashboard = (cfg.get("logger") or {}).get("wandb_dashboard")  # conf/logger/wandb.yaml
    if dashboard:
        from maskrcnn.training.wandb_dashboard import WandbDashboard

        callbacks.append(WandbDashboard(**dashboard))
    return callbacks


def _needs_logger(callback: pl.Callback) -> bool:
    return bool(getattr(callback, "requires_logger", False)) or isinstance(callback, _NEED_A_LOGGER)


def build_loggers(cfg: DictConfig) -> list:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]


def build_trainer(cfg: DictConfig, **overrides: Any) -> pl.Trainer:
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg)
    if not loggers:
        dropped = [type(c).__name__ for c in callbacks if _needs_logger(c)]
        if dropped:
            log.info("No logger (logger=none): leaving out the callbacks that need one: %s", ", ".join(dropped))
        callbacks = [c for c in callbacks if not _needs_logger(c)]
    if not sys.stdout.isatty():
        # A redirected log gets ProgressLog's plain lines: no progress bar, no Rich live display or
        # its refresh thread (and no tqdm bar in its place).
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.ProgressBar)]
        overrides.setdefault("enable_progress_bar", False)
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **overrides)
