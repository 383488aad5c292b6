"""``train(cfg)`` and ``evaluate(cfg)``: plain functions that the entry points and the tests call."""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import Container, DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.exceptions import SIGTERMException

from maskrcnn.errors import ConfigError
from maskrcnn.inference.slice_options import slice_options
from maskrcnn.inference.tta_options import build_tta, check_tta_config, check_tta_without_slicing
from maskrcnn.run_checkpoint import (
    check_resume_checkpoint,
    checkpoint_meta,
    describe_checkpoint,
    inference_model_config,
    load_net_state,
    read_run_checkpoint,
    resolve_ckpt_path,
)
from maskrcnn.training.auto_settings import resolve_auto_settings
from maskrcnn.training.builders import build_datamodule, build_module, build_trainer
from maskrcnn.training.config_types import check_config_types
from maskrcnn.training.interrupts import TrainingInterrupted, interrupted, resume_command
from maskrcnn.training.module import MaskRCNNModule
from maskrcnn.training.third_party_noise import silence_third_party_noise

log = logging.getLogger(__name__)


def _metrics(trainer: pl.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}


def train(cfg: DictConfig) -> tuple[dict[str, float], dict]:
    """Train (and by default validate the best checkpoint).

    Returns ``(metrics, objects)``: the last logged metrics and ``{"trainer", "module", "datamodule"}``.
    """
    check_config_types(cfg)  # every value's type and range, before anything is built
    silence_third_party_noise()
    pl.seed_everything(cfg.seed, workers=True)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.output_dir)
    datamodule = build_datamodule(cfg)
    resolve_auto_settings(cfg, datamodule)  # e.g. model.rpn.anchor_sizes=auto, before the model exists
    module = build_module(cfg)
    if ckpt_path is not None:  # one line for a file Lightning would fail on with a traceback
        check_resume_checkpoint(ckpt_path, module.net, cfg.data.num_classes)
    trainer = build_trainer(cfg)  # its RunSummary callback prints batch, LR and schedule at fit start
    if ckpt_path is not None:
        rank_zero_info(f"Resuming from {describe_checkpoint(ckpt_path)}")
    _fit_or_stop(cfg, trainer, module, datamodule, ckpt_path)
    metrics = _metrics(trainer)
    if cfg.get("validate_after_train") and not getattr(trainer, "fast_dev_run", False):  # set by Lightning
        ckpt = trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", None) or None  # a ModelCheckpoint's, if it saved one
        trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)
        metrics.update(_metrics(trainer))
        scored = describe_checkpoint(best, _read_progress(best)) if best else "the weights at the end of training"
        _print_coco_summary(module, f"Scored: {scored}")
    return metrics, {"trainer": trainer, "module": module, "datamodule": datamodule}


def _fit_or_stop(
    cfg: DictConfig,
    trainer: pl.Trainer,
    module: MaskRCNNModule,
    datamodule: pl.LightningDataModule,
    ckpt_path: str | None,
) -> None:
    """``trainer.fit``; a stop by signal (``maskrcnn.training.interrupts``) logs its one line and
    leaves as :class:`TrainingInterrupted` (``SystemExit`` 128 + signal number)."""
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except (TrainingInterrupted, SIGTERMException) as exc:
        stop = exc if isinstance(exc, TrainingInterrupted) else interrupted(trainer, signal.SIGTERM)
        if trainer.is_global_zero:
            overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None
            saved = trainer.global_step > 0 or (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").is_file()
            log.warning(stop.message(resume_command(cfg.paths.output_dir, overrides), saved))
        raise stop from None


def _read_progress(path: str | Path) -> dict | None:
    """epoch, global_step, callback states and ``ema`` of a checkpoint (weights memory-mapped, not read), or None."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - only for a description
        return None
    return {k: ckpt.get(k) for k in ("epoch", "global_step", "callbacks", "ema")}


def evaluate(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, float]:
    """COCO box/mask AP of ``cfg.ckpt_path`` on the validation split.

    Model, data and loss are rebuilt from the config stored in the checkpoint; ``overrides`` (the
    command line's, ``src/eval.py`` passes Hydra's task overrides) change it: see
    :func:`config_from_checkpoint`. Trainer, logger, paths, ``eval_backend`` and ``tta`` are this
    run's; with test-time augmentation the AP is that of the merged views (no loss terms), and the
    last line says its cost (``TTA: <n> views per image (...), <r>x the time without TTA (<n> images)``).
    """
    if not cfg.get("ckpt_path") or cfg.ckpt_path == "???":
        raise ConfigError("ckpt_path must point to a checkpoint (ckpt_path=outputs/.../checkpoints/last.ckpt)")
    silence_third_party_noise()
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, cfg.paths.output_dir)
    assert ckpt_path is not None  # cfg.ckpt_path is set (checked above)
    ckpt = read_run_checkpoint(ckpt_path)
    cfg = config_from_checkpoint(cfg, ckpt["run_config"], overrides)
    check_config_types(cfg)
    tta_settings = check_tta_config(cfg.get("tta"))
    check_tta_without_slicing(tta_settings, slice_options((cfg.get("inference") or {}).get("slice")))
    datamodule = build_datamodule(cfg)
    meta = checkpoint_meta(ckpt)
    if meta["class_names"] and meta["label_to_category_id"]:  # the names the model was trained with
        names = {cat: meta["class_names"][label] for label, cat in meta["label_to_category_id"].items()}
        datamodule.expected_categories = (f"checkpoint ({ckpt_path})", names)
    module = build_module(cfg)
    load_net_state(module.net, ckpt, ckpt_path, built_for=f"data.num_classes={cfg.data.num_classes}")
    scored = describe_checkpoint(ckpt_path, ckpt)
    rank_zero_info(f"Evaluating {scored}")
    del ckpt  # the weights now live in the module
    tta = module.tta = build_tta(tta_settings, module.net)  # None for tta=none
    trainer = build_trainer(cfg)
    trainer.validate(module, datamodule=datamodule, verbose=True)
    _print_coco_summary(module, f"Scored: {scored}")
    if tta is not None:
        rank_zero_info(tta.cost.line())
    return _metrics(trainer)


# Sections of the stored training config that evaluation rebuilds from the checkpoint.
FROM_CHECKPOINT = ("model", "data", "loss")


def config_from_checkpoint(cfg: DictConfig, run_config: dict, overrides: Sequence[str] = ()) -> DictConfig:
    """``cfg`` with its model, data and loss sections taken from ``run_config`` (a checkpoint's).

    Only what the user wrote changes them, never a default of eval.yaml: a key override
    (``model.roi_heads.score_thresh=0.01``, ``data.val.annotation_file=...``, ``~data.x``) is applied
    on top of the stored section, with the value Hydra composed for it; choosing a group
    (``data=coco``) replaces the whole section by this run's composition.
    """
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    replaced = {o.key_or_group for o in parsed if o.key_or_group in FROM_CHECKPOINT}
    merged = OmegaConf.create(cast(dict, OmegaConf.to_container(cfg, resolve=True)))
    applied = []
    for section in FROM_CHECKPOINT:
        if section in replaced or not isinstance(run_config.get(section), dict):
            continue
        stored = run_config[section] if section != "model" else inference_model_config(run_config)
        merged[section] = stored
        for override in parsed:
            key = override.key_or_group
            if not key.startswith(section + "."):
                continue
            if override.is_delete():
                parent, _, leaf = key.rpartition(".")
                node = OmegaConf.select(merged, parent)
                if isinstance(node, DictConfig) and leaf in node:
                    del node[leaf]
            else:
                value = OmegaConf.select(cfg, key)
                value = OmegaConf.to_container(value, resolve=True) if isinstance(value, Container) else value
                OmegaConf.update(merged, key, value, merge=False, force_add=True)
            applied.append(override.input_line)
    if "data" not in replaced and "data" in merged:
        merged.data.skipped_log_dir = cfg.paths.output_dir  # this run's directory, not the training run's
    rank_zero_info(
        f"Evaluating with the checkpoint's stored {', '.join(s for s in FROM_CHECKPOINT if s not in replaced)} "
        f"config; applied on top: {applied or 'nothing'}"
        + (f"; this run's composition for {sorted(replaced)}" if replaced else "")
    )
    return merged


def _print_coco_summary(module: MaskRCNNModule, scored: str = "") -> None:
    """COCO summary (AP, AP50, AP75, APs/m/l for boxes and masks) and the per-category table, after
    ``scored`` (the line naming the checkpoint file the numbers are for)."""
    if module.evaluator is None or not module.trainer.is_global_zero:
        return
    m = module.last_val_metrics
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    lines = [f"{'':5}" + "".join(f"{n:>8}" for n in names)]
    for kind in ("bbox", "segm"):
        values = (m.get(f"{kind}_{n}", math.nan) for n in names)
        lines.append(
            f"{kind:5}" + "".join(f"{'-':>8}" if math.isnan(v) else f"{v:8.3f}" for v in values)
        )  # - : not computable
    head = f"\n{scored}" if scored else ""
    rank_zero_info(head + "\n" + "\n".join(lines) + "\n\n" + module.evaluator.per_category_table())
