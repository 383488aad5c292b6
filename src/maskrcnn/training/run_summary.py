"""What a run is about to do, printed and saved before the first step: the run summary and the
dataset-fit report (``maskrcnn.data.fit.report``).

``describe_config(cfg)`` reads the config (this module is part of the top-level pipeline, like
``builders.py``); the ``RunSummary`` callback adds what only exists once Lightning has set up the
data and the devices (dataset counts, world size, optimizer steps) and writes, from rank 0 only,
``run_summary.txt`` / ``run_summary.json`` and ``dataset_fit.txt`` / ``dataset_fit.json`` into the
run directory.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from maskrcnn.data.copy_paste import CopyPaste
from maskrcnn.data.transforms import NO_RESIZE_AUGMENTATIONS, default_multiscale_sizes

if TYPE_CHECKING:
    from maskrcnn.data.fit.report import FitReport

log = logging.getLogger(__name__)


def _copy_paste_settings(cfg: DictConfig) -> dict[str, Any] | None:
    """The training items' copy-paste (data.copy_paste), or None when off (``CopyPaste.from_config``)."""
    options = cfg.data.get("copy_paste")
    paste = CopyPaste.from_config(dict(options) if options else None)
    return None if paste is None else {"prob": paste.prob, "scale_range": list(paste.scale_range)}


def describe_config(cfg: DictConfig) -> dict[str, Any]:
    """The settings that decide what a run trains, as plain values."""
    model, aug = cfg.model, cfg.augmentation
    backbone = model.backbone
    train_sizes = aug.get("min_size")
    if aug.name == "multiscale":
        train_sizes = (
            list(aug.multiscale_sizes) if aug.get("multiscale_sizes") else default_multiscale_sizes(train_sizes)
        )
    if aug.name == "lsj":
        train_sizes = f"large-scale jitter of {aug.lsj_size} px x {list(aug.lsj_scale)}"
    elif aug.name == "none":
        train_sizes = "file size (no resize)"
    elif aug.name == "tiles":
        train_sizes = f"native-resolution tiles of {aug.tile_size} px"
    return {
        "model": f"{backbone.name} + FPN ({backbone.out_channels} channels), norm {backbone.norm}, "
        + (f"ImageNet weights, {backbone.trainable_layers} trainable stages" if backbone.pretrained else "from scratch")
        + (f", init_from {model.init_from}" if model.get("init_from") else ""),
        "loss": _loss_name(cfg),
        "train_min_size": OmegaConf.to_container(train_sizes) if OmegaConf.is_config(train_sizes) else train_sizes,
        "train_max_size": aug.get("max_size"),
        "augmentation": aug.name,
        "copy_paste": _copy_paste_settings(cfg),
        "eval_size": [model.transform.min_size, model.transform.max_size],
        "resize_in_model": bool(model.transform.get("resize_in_training", False)),
        "anchor_sizes": model.rpn.anchor_sizes
        if isinstance(model.rpn.anchor_sizes, str)
        else [list(level) for level in model.rpn.anchor_sizes],
        "aspect_ratios": [list(level) for level in model.rpn.aspect_ratios],
        "rpn_fg_iou_thresh": model.rpn.fg_iou_thresh,
        "detections_per_img": model.roi_heads.detections_per_img,
        "batch_size": int(cfg.data.batch_size),
        "accumulate_grad_batches": int(cfg.trainer.get("accumulate_grad_batches") or 1),
        "lr_per_16_images": float(cfg.optimizer.lr_per_16_images),
        "optimizer": cfg.optimizer.fn._target_.rsplit(".", 1)[-1],
        "scheduler": cfg.scheduler._target_.rsplit(".", 1)[-1] if "_target_" in cfg.get("scheduler", {}) else None,
        "warmup_steps": cfg.scheduler.get("warmup_steps"),
        "max_epochs": cfg.trainer.get("max_epochs"),
        "max_steps": cfg.trainer.get("max_steps"),
        "precision": str(cfg.trainer.get("precision")),
        "sampler": cfg.data.get("sampler", "random"),
        "repeat_threshold": cfg.data.get("repeat_threshold"),
        "ema": _ema_settings(cfg),
    }


def _ema_settings(cfg: DictConfig) -> dict[str, Any] | None:
    ema = (cfg.get("callbacks") or {}).get("ema")
    keys = ("decay", "update_starting_at_step", "update_every_n_steps")
    return {k: ema.get(k) for k in keys} if ema else None


def _loss_name(cfg: DictConfig) -> str:
    terms = cfg.loss.criterion
    kinds = {slot: terms[slot]._target_.rsplit(".", 1)[-1] for slot in ("objectness", "classifier", "box", "mask")}
    return ", ".join(f"{slot} {name}" for slot, name in kinds.items())


class RunSummary(pl.Callback):
    """Prints and saves the run summary and the dataset-fit report at the start of ``fit``.

    Args:
        settings: ``describe_config(cfg)``.
        output_dir: run directory (files are written by global rank 0 only).
        fit_report: also compute the dataset-fit report for the training settings.
    """

    def __init__(self, settings: dict[str, Any], output_dir: str | Path | None, fit_report: bool = True) -> None:
        self.settings = dict(settings)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.fit_report = fit_report
        self.summary: dict[str, Any] | None = None
        self.report: FitReport | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        dm = getattr(trainer, "datamodule", None)  # set by Lightning, not declared on Trainer
        self.summary = {**self.settings, **self._runtime(trainer, pl_module, dm)}
        text = format_summary(self.summary)
        log.info("%s", text)
        self._write("run_summary", text, self.summary)
        if self.fit_report and dm is not None:
            self._report(dm)
        self._to_wandb(trainer)

    def _to_wandb(self, trainer: pl.Trainer) -> None:
        """The summary and the fit report become part of the W&B run config (searchable, comparable)."""
        from pytorch_lightning.loggers import WandbLogger

        extra = {"run_summary": self.summary}
        if self.report is not None:
            extra["dataset_fit"] = json.loads(json.dumps(self.report.to_dict(), default=str))
        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger):
                lg.experiment.config.update(extra, allow_val_change=True)

    def _runtime(self, trainer: pl.Trainer, pl_module: pl.LightningModule, dm: Any) -> dict[str, Any]:
        world = trainer.world_size
        out: dict[str, Any] = {
            "devices": trainer.num_devices,
            "num_nodes": trainer.num_nodes,
            "world_size": world,
            "lr": getattr(pl_module, "lr", None),
        }
        # in place of Lightning's model summary table (off by default: its FLOPs column reads 0
        # without an example input, and its box drawing clutters a redirected log)
        out["parameters"] = sum(p.numel() for p in pl_module.parameters())
        out["trainable_parameters"] = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        out["images_per_step"] = self.settings["batch_size"] * world * self.settings["accumulate_grad_batches"]
        try:
            out["optimizer_steps"] = int(trainer.estimated_stepping_batches)
        except Exception:  # noqa: BLE001 - e.g. an infinite run: not worth failing the start over
            out["optimizer_steps"] = None
        for split in ("train", "val"):
            dataset = getattr(dm, f"{split}_dataset", None)
            if dataset is not None:
                out[f"{split}_images"] = len(dataset)
                out[f"{split}_instances"] = dataset.num_instances()
        if getattr(dm, "train_dataset", None) is not None:
            # images per epoch over all ranks; more than the images with data.sampler=repeat_factor
            out["train_epoch_images"], _ = dm.train_epoch_images()
            out["steps_per_epoch"] = math.ceil(out["train_epoch_images"] / (self.settings["batch_size"] * world))
            out["classes"] = list(dm.class_names[1:])
        return out

    def _report(self, dm: Any) -> None:
        from maskrcnn.data.fit.report_text import format_report

        self.report = fit_report(self.settings, dm.train_dataset.annotation_file, dm.val_annotation_file)
        text = format_report(self.report)
        log.info("%s", text)
        for warning in self.report.warnings:
            fix = f"  fix: {warning.override}" if warning.override else ""
            log.warning("dataset fit: %s%s", warning.message, fix)
        self._write("dataset_fit", text, self.report.to_dict())

    def _write(self, name: str, text: str, data: dict) -> None:
        if self.output_dir is None:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / f"{name}.txt").write_text(text + "\n", encoding="utf-8")
        (self.output_dir / f"{name}.json").write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")


def fit_report(
    settings: dict[str, Any],
    train_file: str | Path,
    val_file: str | Path | None = None,
    anchor_sizes: Sequence[Sequence[float]] | None = None,
) -> FitReport:
    """The dataset-fit report of the annotation files for the run's training scale and anchors
    (``anchor_sizes`` replaces the configured ones, e.g. to evaluate a candidate set).
    A run that resizes neither in the data pipeline (``augmentation=tiles|none|hflip``) nor in the
    model (``model.transform.resize_in_training=false``) trains at file resolution: objects are
    measured at their file size."""
    from maskrcnn.data.fit.report import compute_fit_report

    s = settings
    sizes = s["train_min_size"] if isinstance(s["train_min_size"], (int, list)) else s["eval_size"][0]
    if s["augmentation"] in NO_RESIZE_AUGMENTATIONS and not s["resize_in_model"]:
        sizes = None
    return compute_fit_report(
        train_file,
        val_file,
        min_size=sizes,
        max_size=s["train_max_size"] or s["eval_size"][1],
        anchor_sizes=anchor_sizes or s["anchor_sizes"],
        aspect_ratios=s["aspect_ratios"],
        detections_per_img=s["detections_per_img"],
        rpn_fg_iou_thresh=s["rpn_fg_iou_thresh"],
    )


def format_summary(s: dict[str, Any]) -> str:
    """The run summary as ~9 aligned lines."""
    steps = s.get("optimizer_steps")
    epochs = f"{s['max_epochs']} epochs" if (s.get("max_steps") or -1) < 0 else f"max_steps {s['max_steps']}"
    per_epoch = f" of {s['steps_per_epoch']} batches" if s.get("steps_per_epoch") else ""
    model = s["model"]
    if s.get("parameters") is not None:
        model += f"; {_millions(s['parameters'])} parameters, {_millions(s['trainable_parameters'])} trainable"
    lines = [
        ("model", model),
        ("loss", s["loss"]),
        (
            "images",
            f"train {s['train_min_size']} (max {s['train_max_size']}, augmentation {s['augmentation']}"
            + (
                f" + copy-paste p {s['copy_paste']['prob']:g}, scale {s['copy_paste']['scale_range']}"
                if s.get("copy_paste")
                else ""
            )
            + "); "
            f"eval {s['eval_size'][0]} (max {s['eval_size'][1]})",
        ),
        (
            "anchors",
            f"{', '.join(str(a[0]) if len(a) == 1 else str(a) for a in s['anchor_sizes'])} px, "
            f"detections/image {s['detections_per_img']}",
        ),
        (
            "batch",
            f"{s['batch_size']} per device x {s['world_size']} device(s) x {s['accumulate_grad_batches']} "
            f"accumulation = {s['images_per_step']} images/step, precision {s['precision']}",
        ),
        (
            "lr",
            f"{s['lr']:.5g} ({s['optimizer']}, lr_per_16_images {s['lr_per_16_images']:g}), "
            f"{s['scheduler']}, warm-up {s['warmup_steps']} steps"
            if s.get("lr") is not None
            else "-",
        ),
        ("schedule", f"{epochs}{per_epoch} = {steps if steps is not None else '?'} optimizer steps"),
        (
            "data",
            f"train {s.get('train_images', '?')} images / {s.get('train_instances', '?')} instances, "
            f"val {s.get('val_images', '?')} images / {s.get('val_instances', '?')} instances, "
            f"{len(s.get('classes', []))} classes: {_names(s.get('classes', []))}",
        ),
    ]
    if s.get("sampler") == "repeat_factor":
        lines.append(
            (
                "sampling",
                f"repeat_factor (threshold {s['repeat_threshold']:g}): {s.get('train_epoch_images', '?')} images "
                f"per epoch, {s.get('train_images', '?')} without repeats",
            )
        )
    if s.get("ema"):
        e = s["ema"]
        lines.append(
            (
                "ema",
                f"decay {e['decay']:g}, from step {e['update_starting_at_step']}, every {e['update_every_n_steps']} "
                "step(s); validation and checkpoints use the averaged weights",
            )
        )
    return "Run summary\n" + "\n".join(f"  {k:<9} {v}" for k, v in lines)


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f} M" if count >= 1e5 else f"{count:,}"


def _names(classes: list[str], limit: int = 8) -> str:
    shown = ", ".join(classes[:limit])
    return shown + (f", ... ({len(classes) - limit} more)" if len(classes) > limit else "")
