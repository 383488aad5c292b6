"""Callbacks specific to this project."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from maskrcnn.data.readers.image_io import image_to_uint8
from maskrcnn.modeling.postprocess import detections_to_numpy


class ValidationImageLogger(pl.Callback):
    """Draws the predicted masks into the first ``num_images`` validation images (burnt in) and
    sends them, once per validation epoch and from rank 0 only, to the loggers without native
    overlays: TensorBoard (``add_image``), CSV (PNG files under ``<log_dir>/val_images``) and any
    other logger with ``log_image``. W&B gets native, toggleable overlays from
    ``maskrcnn.training.wandb_dashboard.WandbDashboard`` instead."""

    requires_logger = True  # left out by build_trainer when there is no logger

    def __init__(self, num_images: int = 4, score_thresh: float = 0.5) -> None:
        self.num_images = num_images
        self.score_thresh = score_thresh

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero or not outputs:
            return
        loggers = [lg for lg in trainer.loggers if not isinstance(lg, WandbLogger)]
        if not loggers:
            return
        from maskrcnn.data.draw import draw_instances

        images, targets = batch
        names = list(getattr(getattr(trainer, "datamodule", None), "class_names", []) or [])
        pictures = {}
        for image, target, det in list(zip(images, targets, outputs["detections"], strict=True))[: self.num_images]:
            d = detections_to_numpy(det, self.score_thresh)
            pictures[int(target["image_id"])] = draw_instances(
                image_to_uint8(image), d["boxes"], d["masks"], d["labels"], names, scores=d["scores"]
            )
        step = trainer.global_step
        for lg in loggers:
            if isinstance(lg, TensorBoardLogger):
                for image_id, picture in pictures.items():
                    lg.experiment.add_image(f"val/predictions/{image_id}", picture, step, dataformats="HWC")
            elif isinstance(lg, CSVLogger):
                folder = Path(lg.log_dir) / "val_images"
                folder.mkdir(parents=True, exist_ok=True)
                for image_id, picture in pictures.items():
                    Image.fromarray(picture).save(folder / f"step{step:07d}_image{image_id}.png")
            elif hasattr(lg, "log_image"):
                lg.log_image(key="val/predictions", images=list(pictures.values()), step=step)
