"""Callbacks specific to this project."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from maskrcnn.data.image_io import image_to_uint8


def detections_to_numpy(det: dict, score_thresh: float) -> dict[str, np.ndarray]:
    """Keep detections with ``score >= score_thresh``; masks ``[D,1,H,W]`` probabilities → bool ``[D,H,W]``."""
    keep = det["scores"] >= score_thresh
    masks = det["masks"]
    if isinstance(masks, Tensor):
        masks = masks[keep][:, 0]
        masks = (masks > 0.5 if masks.dtype != torch.bool else masks).cpu().numpy()
    else:  # RLE list
        from pycocotools import mask as mask_utils

        kept = [m for m, k in zip(masks, keep.tolist()) if k]
        masks = mask_utils.decode(kept).transpose(2, 0, 1).astype(bool) if kept else None
    return {
        "boxes": det["boxes"][keep].cpu().numpy(),
        "labels": det["labels"][keep].cpu().numpy(),
        "scores": det["scores"][keep].cpu().numpy(),
        "masks": masks,
    }


class ValidationImageLogger(pl.Callback):
    """Sends the first ``num_images`` validation images, with predicted masks drawn, to every
    logger that can show images (W&B), once per validation epoch, from rank 0 only."""

    requires_logger = True  # left out by build_trainer when there is no logger

    def __init__(self, num_images: int = 4, score_thresh: float = 0.5) -> None:
        self.num_images = num_images
        self.score_thresh = score_thresh

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero or not outputs:
            return
        loggers = [lg for lg in trainer.loggers if hasattr(lg, "log_image")]
        if not loggers:
            return
        from maskrcnn.data.draw import draw_instances

        images, _ = batch
        names = list(getattr(trainer.datamodule, "class_names", []) or [])
        pictures = []
        for image, det in list(zip(images, outputs["detections"]))[: self.num_images]:
            d = detections_to_numpy(det, self.score_thresh)
            pictures.append(
                draw_instances(image_to_uint8(image), d["boxes"], d["masks"], d["labels"], names, scores=d["scores"])
            )
        for lg in loggers:
            lg.log_image(key="val/predictions", images=pictures, step=trainer.global_step)
