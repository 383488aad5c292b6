"""Checks of config values, called where ``training/builders.py`` reads them.

A bad value gets a :class:`ConfigError` naming the key and the value, instead of a TypeError or a
torch message (``Invalid learning rate: -0.005``) deep inside setup. The one check that needs the
dataset (an effective batch larger than the training set) runs as a callback once the data module
is set up.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import pytorch_lightning as pl

from maskrcnn.errors import ConfigError

log = logging.getLogger(__name__)


def positive_int(value: object, key: str) -> int:
    """``value`` as an int >= 1; bools, floats with a fraction and strings are rejected.

    Raises:
        ConfigError: naming ``key`` and the value.
    """
    ok = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, float) and value.is_integer():  # 4.0 from a computed config
        value, ok = int(value), True
    if not ok or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r} must be a positive integer")
    return int(value)


def positive_float(value: object, key: str) -> float:
    """``value`` as a finite float > 0 (ints are fine).

    Raises:
        ConfigError: naming ``key`` and the value.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key}={value!r} must be a positive finite number")
    return float(value)


def check_num_classes(value: object, key: str = "data.num_classes") -> int:
    """The number of foreground categories (the model adds background)."""
    if value in (None, "???"):
        raise ConfigError(f"{key} must be set (number of foreground categories in the dataset)")
    return positive_int(value, key)


def check_model_matches_data_classes(model_classes: object, data_classes: object) -> int:
    """``model.num_classes`` (it follows ``data.num_classes`` unless overridden) must equal
    ``data.num_classes``, which the data module checks against the annotation files: a class head
    of another size fails deep inside a training or validation step instead."""
    model_classes = check_num_classes(model_classes, "model.num_classes")
    if data_classes not in (None, "???") and model_classes != check_num_classes(data_classes):
        raise ConfigError(
            f"model.num_classes={model_classes} but data.num_classes={data_classes}: the class head must "
            "have one output per dataset category (drop the model.num_classes override; it follows data.num_classes)"
        )
    return model_classes


def check_transform_sizes(transform: Mapping | None) -> None:
    """``model.transform.min_size`` (an int, or a list for multi-scale training) and ``max_size``."""
    transform = transform or {}
    if "min_size" in transform:
        sizes = transform["min_size"]
        if isinstance(sizes, (list, tuple)):
            if not sizes:
                raise ConfigError("model.transform.min_size=[] must hold at least one size")
            for i, size in enumerate(sizes):
                positive_int(size, f"model.transform.min_size[{i}]")
        else:
            positive_int(sizes, "model.transform.min_size")
    if "max_size" in transform:
        positive_int(transform["max_size"], "model.transform.max_size")


def check_trainer(trainer: Mapping) -> None:
    """``trainer.accumulate_grad_batches`` and ``trainer.num_nodes`` (they scale the LR)."""
    positive_int(trainer.get("accumulate_grad_batches", 1), "trainer.accumulate_grad_batches")
    positive_int(trainer.get("num_nodes", 1), "trainer.num_nodes")


class BatchFitsDatasetCheck(pl.Callback):
    """Warns, once the training set is loaded, when one optimizer step wants more images than it has.

    The LR follows the linear scaling rule for ``effective_batch`` images per step; a training set
    smaller than that cannot fill a single step, so every step sees fewer images than the LR
    was scaled for (``data.batch_size=1000`` on 4 images trains with a 250x too high LR).
    """

    def __init__(self, batch_size: int, effective_batch: int, lr: float) -> None:
        self.batch_size, self.effective_batch, self.lr = batch_size, effective_batch, lr
        self.message: str | None = None  # the warning given, for tests and the log

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dataset = getattr(getattr(trainer, "datamodule", None), "train_dataset", None)
        if dataset is None:
            return
        images = len(dataset)
        if self.effective_batch <= images:
            return
        self.message = (
            f"data.batch_size={self.batch_size} gives an effective batch of {self.effective_batch} images per "
            f"optimizer step (x devices x nodes x trainer.accumulate_grad_batches), but the training split has "
            f"only {images} images: one epoch cannot fill one step, while the LR ({self.lr:.4g}, from "
            f"optimizer.lr_per_16_images) is scaled for {self.effective_batch} images. Lower data.batch_size "
            f"(or the accumulation) so that the effective batch is at most {images}."
        )
        if trainer.is_global_zero:
            log.warning(self.message)
