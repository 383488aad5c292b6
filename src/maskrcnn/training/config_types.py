"""The type and range of every value of the training and evaluation configs, checked before anything is built.

:data:`CONFIG_TYPES` maps a key (``*`` stands for every entry of a mapping or list) to what its value
may be; :func:`check_config_types` checks a composed config against it and raises one
:class:`ConfigError` naming the first bad key, its value and what it must be. Keys a config does not
have are not checked (eval has no optimizer, ``augmentation=none`` has no sizes); a mandatory value
still ``???`` is left to the code that needs it. Checks that need two keys or the data (``model.num_classes``
against ``data.num_classes``, resize limits) stay with that code.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    InterpolationToMissingValueError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)

from maskrcnn.data.copy_paste import COPY_PASTE_RULES
from maskrcnn.data.transforms import AUGMENTATIONS
from maskrcnn.errors import ConfigError
from maskrcnn.inference.slice_options import SLICE_RULES
from maskrcnn.inference.tta_options import TTA_RULES
from maskrcnn.training.config_rules import (
    ANCHORS,
    BATCH_LIMIT,
    BOOL,
    COUNT,
    DEVICES,
    INTERVAL,
    NULL,
    PIXELS,
    POSITIVE,
    PRECISIONS,
    PROBABILITY,
    SEED,
    SIZES,
    STEP_LIMIT,
    TEXT,
    Rule,
    choice,
    integer,
    list_of,
    number,
)

CONFIG_TYPES: dict[str, Rule] = {
    # top level (train.yaml / eval.yaml)
    "seed": SEED,
    "task_name": TEXT,
    "validate_after_train": BOOL,
    "nonfinite_loss": choice("raise", "skip"),
    "log_val_images": COUNT,
    "dataset_report": BOOL,
    "eval_backend": choice("faster_coco_eval", "pycocotools"),
    "nonfinite_max_skip_fraction": PROBABILITY,
    "nonfinite_skip_window": POSITIVE,
    "nonfinite_min_skipped": POSITIVE,
    "ckpt_path": NULL | TEXT,
    # data
    "data.num_classes": POSITIVE,
    "data.batch_size": POSITIVE,
    "data.num_workers": COUNT,
    "data.pin_memory": BOOL,
    "data.persistent_workers": BOOL,
    "data.aspect_ratio_grouping": BOOL | choice("auto"),
    "data.keep_empty": BOOL,
    "data.seed": SEED,
    "data.sampler": choice("random", "repeat_factor"),
    "data.repeat_threshold": number(0, 1, low_open=True),
    "data.check_images": choice("header", "full", "none"),
    "data.bad_images": choice("skip", "raise"),
    "data.train.image_dir": TEXT,
    "data.train.annotation_file": TEXT,
    "data.val.image_dir": TEXT,
    "data.val.annotation_file": TEXT,
    "data.generate_shapes.num_train": POSITIVE,
    "data.generate_shapes.num_val": POSITIVE,
    "data.generate_shapes.image_size": PIXELS,
    "data.generate_shapes.seed": SEED,
    # augmentation
    "augmentation.name": choice(*AUGMENTATIONS),
    "augmentation.min_size": SIZES,
    "augmentation.max_size": PIXELS,
    "augmentation.lsj_size": PIXELS,
    "augmentation.lsj_scale": list_of(number(0, low_open=True), 2, 2),
    "augmentation.multiscale_sizes": NULL | SIZES,
    "augmentation.tile_size": PIXELS,
    "augmentation.tile_min_area": COUNT,
    "augmentation.tile_min_visibility": PROBABILITY,
    **{f"copy_paste.{key}": Rule(what, ok) for key, (what, ok) in COPY_PASTE_RULES.items()},
    # inference (sliced validation / evaluation; predict checks the same rules)
    **{f"inference.slice.{key}": Rule(what, ok) for key, (what, ok) in SLICE_RULES.items()},
    # model
    "model.num_classes": POSITIVE,
    "model.backbone.name": TEXT,
    "model.backbone.pretrained": BOOL,
    "model.backbone.trainable_layers": integer(0, 5),
    "model.backbone.norm": choice("frozen_bn", "bn", "gn"),
    "model.backbone.out_channels": POSITIVE,
    "model.rpn.anchor_sizes": ANCHORS,
    "model.rpn.aspect_ratios": list_of(list_of(number(0, low_open=True))),
    "model.rpn.fg_iou_thresh": PROBABILITY,
    "model.rpn.bg_iou_thresh": PROBABILITY,
    "model.rpn.batch_size_per_image": NULL | POSITIVE,
    "model.rpn.positive_fraction": PROBABILITY,
    "model.rpn.pre_nms_top_n_train": POSITIVE,
    "model.rpn.pre_nms_top_n_test": POSITIVE,
    "model.rpn.post_nms_top_n_train": POSITIVE,
    "model.rpn.post_nms_top_n_test": POSITIVE,
    "model.rpn.nms_thresh": PROBABILITY,
    "model.roi_heads.fg_iou_thresh": PROBABILITY,
    "model.roi_heads.bg_iou_thresh": PROBABILITY,
    "model.roi_heads.batch_size_per_image": NULL | POSITIVE,
    "model.roi_heads.positive_fraction": PROBABILITY,
    "model.roi_heads.score_thresh": PROBABILITY,
    "model.roi_heads.nms_thresh": PROBABILITY,
    "model.roi_heads.detections_per_img": POSITIVE,
    "model.roi_heads.representation_size": POSITIVE,
    "model.roi_heads.mask_layers": list_of(POSITIVE),
    "model.roi_heads.predictor_init": choice("detectron2", "torchvision"),
    "model.roi_align.aligned": BOOL,
    "model.roi_align.sampling_ratio": integer(-1),
    "model.roi_align.interpolation": choice("bilinear", "bicubic"),
    "model.roi_align.backward_threads": POSITIVE,
    "model.transform.min_size": SIZES,
    "model.transform.max_size": PIXELS,
    "model.transform.resize_in_training": BOOL,
    "model.mask_format": choice("prob", "binary", "rle"),
    "model.init_from": NULL | TEXT,
    "model.channels_last": BOOL,
    # test-time augmentation (eval; predict checks the same rules in inference/tta_options.py)
    **{f"tta.{key}": Rule(what, ok) for key, (what, ok) in TTA_RULES.items()},
    # loss
    "loss.weights.*": number(0),
    "loss.criterion.*.alpha": NULL | PROBABILITY,
    "loss.criterion.*.gamma": number(0),
    # optimizer and scheduler
    "optimizer.lr_per_16_images": number(0, low_open=True),
    "optimizer.fn.lr": number(0, low_open=True),
    "optimizer.fn.weight_decay": number(0),
    "optimizer.fn.momentum": PROBABILITY,
    "optimizer.fn.betas": list_of(number(0, 1), 2, 2),
    "optimizer.fn.eps": number(0, low_open=True),
    "scheduler.warmup_steps": COUNT,
    "scheduler.warmup_factor": number(0, 1, low_open=True),
    "scheduler.final_factor": PROBABILITY,
    "scheduler.gamma": number(0, low_open=True),
    "scheduler.milestones": list_of(number(0, 1, low_open=True), 0),
    # trainer
    "trainer.accelerator": choice("cpu", "gpu", "cuda", "mps", "tpu", "auto"),
    "trainer.devices": DEVICES,
    "trainer.num_nodes": POSITIVE,
    "trainer.max_epochs": NULL | STEP_LIMIT,
    "trainer.max_steps": STEP_LIMIT,
    "trainer.precision": choice(*PRECISIONS),
    "trainer.gradient_clip_val": NULL | number(0),
    "trainer.accumulate_grad_batches": POSITIVE,
    "trainer.check_val_every_n_epoch": NULL | POSITIVE,
    "trainer.val_check_interval": NULL | INTERVAL,
    "trainer.limit_train_batches": NULL | BATCH_LIMIT,
    "trainer.limit_val_batches": NULL | BATCH_LIMIT,
    "trainer.log_every_n_steps": POSITIVE,
    "trainer.num_sanity_val_steps": integer(-1),
    "trainer.deterministic": BOOL | choice("warn"),
    "trainer.enable_model_summary": BOOL,
    "trainer.benchmark": NULL | BOOL,
    "trainer.use_distributed_sampler": BOOL,
    "trainer.sync_batchnorm": BOOL,
    # callbacks and loggers
    "callbacks.model_checkpoint.save_top_k": integer(-1),
    "callbacks.model_checkpoint.mode": choice("min", "max"),
    "callbacks.model_checkpoint.save_last": NULL | BOOL | choice("link"),
    "callbacks.model_checkpoint.every_n_train_steps": NULL | COUNT,
    "callbacks.model_checkpoint.every_n_epochs": NULL | COUNT,
    "callbacks.progress_log.every_n_steps": POSITIVE,
    "callbacks.progress_log.every_n_seconds": number(0),
    "callbacks.last_checkpoint.every_n_train_steps": NULL | POSITIVE,
    "callbacks.progress_log.when": choice("auto", "always", "never"),
    "callbacks.ema.decay": Rule("a number in (0, 1)", lambda v: number(0, 1, low_open=True).ok(v) and v != 1),
    "callbacks.ema.update_starting_at_step": COUNT,
    "callbacks.ema.update_every_n_steps": POSITIVE,
    "logger.wandb_dashboard.num_images": COUNT,
    "logger.wandb_dashboard.mask_score_thresh": PROBABILITY,
    "logger.wandb_dashboard.box_score_thresh": PROBABILITY,
    "logger.wandb_dashboard.max_boxes": POSITIVE,
    "logger.wandb_dashboard.pr_iou": number(0.5, 0.95),
}


def _values(node: object, parts: list[str], shown: str) -> Iterator[tuple[str, object]]:
    """(displayed key, resolved value) of every value under ``node`` that ``parts`` names."""
    if not parts:
        yield shown, node
        return
    head, rest = parts[0], parts[1:]
    if head == "*" and isinstance(node, ListConfig):
        entries: list[tuple[Any, str]] = [(i, f"{shown}[{i}]") for i in range(len(node))]
    elif head == "*" and isinstance(node, DictConfig):
        entries = [(k, f"{shown}.{k!s}") for k in node]
    elif isinstance(node, DictConfig) and head in node:
        entries = [(head, f"{shown}.{head}" if shown else head)]
    else:
        return
    for key, name in entries:
        if OmegaConf.is_missing(node, key):
            continue
        try:
            child = node[key]
        except (MissingMandatoryValue, InterpolationToMissingValueError):
            continue  # left to the code that needs it, which says which key to set
        except OmegaConfBaseException as exc:  # an interpolation that does not resolve
            raise ConfigError(f"{name}: {' '.join(str(exc).split())}") from exc
        yield from _values(child, rest, name)


def check_config_types(cfg: DictConfig, table: dict[str, Rule] = CONFIG_TYPES) -> None:
    """Check every key of ``table`` that ``cfg`` has.

    Raises:
        ConfigError: "<key>=<value> must be <what>" for the first bad value.
    """
    for pattern, rule in table.items():
        for key, value in _values(cfg, pattern.split("."), ""):
            plain = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            if not rule.ok(plain):
                raise ConfigError(f"{key}={plain!r} must be {rule.what}")
