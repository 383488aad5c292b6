"""The W&B validation dashboard: native mask/box overlays of fixed images, a per-class AP table and
per-class precision-recall curves, plus the run config and a dataset summary.

Registered by ``training/builders.py`` when the composed ``logger`` group has a ``wandb_dashboard``
entry (``conf/logger/wandb.yaml``); it does nothing without a W&B logger. Keys (every validation):

- ``val/samples/<image_id>``: one key per sample image (W&B warns when one key holds images of
  different sizes, and COCO images differ), layers "predictions" and "ground_truth";
- ``val/per_class_AP``: ``wandb.Table`` with class, instances, bbox/segm AP and AP50;
- ``val/pr_curve/<bbox|segm>``: line series (one line per class) of COCOeval's precision array at
  ``pr_iou``, taken from the evaluation the module already ran.

The samples are the first ``num_images`` images of the validation set by index, the same every
epoch. Under DDP each rank collects those in its shard and rank 0, alone, logs them.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytorch_lightning as pl
import torch.distributed as dist
from pytorch_lightning.loggers import WandbLogger

from maskrcnn.training.wandb_media import MAX_MASK_LABEL, ValidationSample, make_sample, to_wandb_image

log = logging.getLogger(__name__)


def dataset_summary(datamodule: Any) -> dict:
    """``{"num_classes", "class_names", "<split>": {"images", "instances", "instances_per_class"}}``
    for the splits the data module has set up (kept images; valid non-crowd instances)."""
    names = list(datamodule.class_names)
    summary: dict = {"num_classes": len(names) - 1, "class_names": names[1:]}
    for split in ("train", "val"):
        dataset = getattr(datamodule, f"{split}_dataset", None)
        if dataset is None:
            continue
        to_label = dataset.category_id_to_label
        # _instances: image id -> valid instance annotations (what num_instances() counts).
        per_class = Counter(
            names[to_label[ann["category_id"]]]
            for img in dataset.images
            for ann in dataset._instances.get(img["id"], ())
        )
        summary[split] = {
            "images": len(dataset),
            "instances": dataset.num_instances(),
            "instances_per_class": {name: per_class.get(name, 0) for name in names[1:]},
        }
    return summary


def per_class_table(rows: list[dict], iou_types: tuple[str, ...]) -> Any:
    """``wandb.Table`` of ``CocoEvaluator.per_category_results()`` rows (None = not computable)."""
    import wandb

    columns: list[str | int] = ["class", "instances"]
    for iou_type in iou_types:
        columns += [f"{iou_type} AP", f"{iou_type} AP50"]
    data = [
        [row["name"], row["instances"], *(row[f"{t}_{n}"] for t in iou_types for n in ("AP", "AP50"))] for row in rows
    ]
    return wandb.Table(columns=columns, data=data)


def pr_curves(evaluator: Any, iou_type: str, iou_threshold: float) -> Any:
    """``wandb.plot.line_series`` of per-class precision vs recall, or None without any curve."""
    import wandb

    recall, curves = evaluator.precision_recall(iou_type, iou_threshold)
    if not curves:
        return None
    names = {int(c["id"]): str(c["name"]) for c in evaluator.coco_gt.loadCats(list(curves))}
    return wandb.plot.line_series(
        xs=recall.tolist(),
        ys=[curve.tolist() for curve in curves.values()],
        keys=[names[category_id] for category_id in curves],
        title=f"{iou_type} precision-recall @ IoU {iou_threshold:.2f}",
        xname="recall",
    )


class WandbDashboard(pl.Callback):
    """See the module docstring.

    Args:
        num_images: fixed validation images logged with overlays every validation (0: none).
        mask_score_thresh: detections drawn in the predicted mask layer (masks have no score slider).
        box_score_thresh: detections listed in the predicted box layer (filter further in the UI).
        max_boxes: at most this many predicted boxes per image, highest scores first.
        pr_iou: IoU threshold of the precision-recall curves (0.50, 0.55, ..., 0.95).
    """

    def __init__(
        self,
        num_images: int = 4,
        mask_score_thresh: float = 0.5,
        box_score_thresh: float = 0.05,
        max_boxes: int = 100,
        pr_iou: float = 0.5,
    ) -> None:
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        self.num_images = int(num_images)
        self.mask_score_thresh = float(mask_score_thresh)
        self.box_score_thresh = float(box_score_thresh)
        self.max_boxes = int(max_boxes)
        self.pr_iou = float(pr_iou)
        self.sample_ids: list[int] | None = None
        self._samples: dict[int, ValidationSample] = {}
        self._config_logged = False

    @staticmethod
    def _wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
        return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        loggers = self._wandb_loggers(trainer)
        if not loggers or self._config_logged or not trainer.is_global_zero:
            return
        self._config_logged = True
        config: dict = {}
        run_config = getattr(pl_module, "run_config", None)
        if run_config:
            config.update(run_config)  # the resolved Hydra config (training/builders.py)
        datamodule = getattr(trainer, "datamodule", None)  # set by Lightning, not declared on Trainer
        if datamodule is not None and hasattr(datamodule, "class_names"):
            config["dataset"] = dataset_summary(datamodule)
            if len(datamodule.class_names) > MAX_MASK_LABEL:
                log.warning(
                    "W&B mask layers hold at most %d classes: the sample images get boxes only", MAX_MASK_LABEL - 1
                )
        for lg in loggers:
            lg.experiment.config.update(config, allow_val_change=True)

    def _choose_samples(self, trainer: pl.Trainer) -> list[int]:
        if self.sample_ids is None:
            dataset = getattr(getattr(trainer, "datamodule", None), "val_dataset", None)
            images = getattr(dataset, "images", None)
            if images is None:
                log.warning("W&B dashboard: the data module has no val_dataset.images; no sample images are logged")
                images = []
            self.sample_ids = [int(img["id"]) for img in images[: self.num_images]]
        return self.sample_ids

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._samples = {}

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or not self.num_images or not outputs or not self._wandb_loggers(trainer):
            return
        wanted = set(self._choose_samples(trainer))
        images, targets = batch
        for image, target, detection in zip(images, targets, outputs["detections"], strict=True):
            image_id = int(target["image_id"])
            if image_id in wanted and image_id not in self._samples:
                self._samples[image_id] = make_sample(
                    image, target, detection, self.mask_score_thresh, self.box_score_thresh, self.max_boxes
                )

    def _gather_samples(self, trainer: pl.Trainer) -> dict[int, ValidationSample]:
        """All ranks' samples on rank 0 (collective: every rank calls it)."""
        if trainer.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
            return self._samples
        parts: list[Any] | None = [None] * dist.get_world_size() if trainer.is_global_zero else None
        dist.gather_object(self._samples, parts, dst=0)
        merged: dict[int, ValidationSample] = {}
        for part in parts or []:
            merged.update(part)
        return merged

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_validation_end, not on_validation_epoch_end: callbacks' epoch-end hooks run before the
        # module's, where the evaluator computes; here its results are ready.
        loggers = self._wandb_loggers(trainer)
        if trainer.sanity_checking or not loggers:
            return
        samples = self._gather_samples(trainer) if self.num_images else {}
        self._samples = {}
        if not trainer.is_global_zero:
            return
        names = list(getattr(getattr(trainer, "datamodule", None), "class_names", []) or [])
        payload = {
            f"val/samples/{image_id}": to_wandb_image(samples[image_id], names)
            for image_id in self._choose_samples(trainer)
            if image_id in samples
        }
        evaluator = getattr(pl_module, "evaluator", None)
        if evaluator is not None and evaluator.coco_evals:
            payload["val/per_class_AP"] = per_class_table(evaluator.per_category_results(), evaluator.iou_types)
            for iou_type in evaluator.iou_types:
                chart = pr_curves(evaluator, iou_type, self.pr_iou)
                if chart is not None:
                    payload[f"val/pr_curve/{iou_type}"] = chart
        if payload:
            payload["trainer/global_step"] = trainer.global_step
            for lg in loggers:
                lg.experiment.log(payload)
