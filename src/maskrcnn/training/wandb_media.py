"""Validation samples as native W&B images: predicted and ground-truth masks and boxes as separate,
toggleable layers (``wandb.Image(image, masks={...}, boxes={...})``).

A W&B mask layer is ONE label map per image (``uint8 [H, W]``, pixel value = class label,
0 = background), so overlapping instance masks are flattened: predictions are painted in
increasing score order (the higher score wins where they overlap), ground truth in decreasing area
order (a small object on top of a large one stays visible). Boxes keep every instance, with a
caption and, for predictions, a score that the W&B UI filters with its score slider (every
detection above a low threshold is listed, highest scores first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from maskrcnn.data.readers.image_io import image_to_uint8
from maskrcnn.modeling.postprocess import detections_to_numpy

# W&B stores a mask layer as an 8-bit PNG after casting to int8: labels above 127 would wrap.
MAX_MASK_LABEL = 127


@dataclass
class ValidationSample:
    """One validation image with its ground truth and predictions, small enough to gather under DDP.

    image: ndarray[H, W, 3] uint8 RGB
    gt_boxes: ndarray[N, 4] float32 xyxy absolute pixels; gt_labels: ndarray[N] int64 in 1..K
    gt_label_map: ndarray[H, W] uint8, flattened ground-truth masks (0 = background)
    pred_boxes: ndarray[D, 4] float32 xyxy; pred_labels: ndarray[D] int64; pred_scores: ndarray[D] float32
        (every detection with score >= the box threshold, highest score first)
    pred_label_map: ndarray[H, W] uint8, flattened masks of detections with score >= the mask threshold
    """

    image_id: int
    image: np.ndarray
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_label_map: np.ndarray
    pred_boxes: np.ndarray
    pred_labels: np.ndarray
    pred_scores: np.ndarray
    pred_label_map: np.ndarray


def flatten_masks(masks: np.ndarray, labels: np.ndarray, order: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Paint ``masks`` (``bool [N, H, W]``) with their ``labels`` (``[N]``) in ``order``; later wins.

    Returns ``ndarray[H, W] uint8`` (0 where no mask covers the pixel).
    """
    label_map = np.zeros(shape, dtype=np.uint8)
    for i in order:
        label_map[masks[i]] = labels[i]
    return label_map


def make_sample(
    image: Tensor,
    target: dict,
    detection: dict,
    mask_score_thresh: float = 0.5,
    box_score_thresh: float = 0.0,
    max_boxes: int = 100,
) -> ValidationSample:
    """Collect what the W&B layers need from one validation image.

    image: Tensor[3, H, W] float in [0, 1] (validation images are not resized by the data module,
        so predictions and ground truth are in the same pixels).
    target: dataset target (``boxes``, ``labels``, ``masks Tensor[N, H, W] uint8``, ``image_id``).
    detection: model output for the image (``boxes``, ``labels``, ``scores``, ``masks``).
    """
    image_id = int(target["image_id"])
    array = image_to_uint8(image)
    shape = array.shape[:2]
    gt_masks = target["masks"].cpu().numpy().astype(bool)
    if gt_masks.shape[1:] != shape:
        raise ValueError(f"image {image_id}: ground-truth masks are {gt_masks.shape[1:]} but the image is {shape}")
    gt_labels = target["labels"].cpu().numpy().astype(np.int64)
    by_area = np.argsort(-gt_masks.reshape(len(gt_masks), -1).sum(1), kind="stable")

    scores = detection["scores"].detach().float()
    by_score = torch.argsort(scores, descending=True, stable=True)
    box_keep = by_score[scores[by_score] >= box_score_thresh][:max_boxes]
    # Masks only for the detections of the mask layer: they are binarised on their device first.
    masked = detections_to_numpy(detection, mask_score_thresh)
    pred_masks = masked["masks"] if masked["masks"] is not None else np.zeros((0, *shape), dtype=bool)
    if pred_masks.shape[1:] != shape:
        raise ValueError(
            f"image {image_id}: predicted masks are {pred_masks.shape[1:]} but the image is {shape}; "
            "detections must be in original image pixels"
        )
    return ValidationSample(
        image_id=image_id,
        image=array,
        gt_boxes=target["boxes"].cpu().numpy().astype(np.float32).reshape(-1, 4),
        gt_labels=gt_labels,
        gt_label_map=flatten_masks(gt_masks, gt_labels, by_area, shape),
        pred_boxes=detection["boxes"].detach()[box_keep].float().cpu().numpy().reshape(-1, 4),
        pred_labels=detection["labels"][box_keep].cpu().numpy().astype(np.int64),
        pred_scores=scores[box_keep].cpu().numpy(),
        pred_label_map=flatten_masks(pred_masks, masked["labels"], np.argsort(masked["scores"], kind="stable"), shape),
    )


def class_labels(class_names: Sequence[str]) -> dict[int, str]:
    """``{label: name}`` for W&B, from names indexed by label (``class_names[0]`` is background)."""
    return {0: "background", **{i: str(name) for i, name in enumerate(class_names) if i > 0}}


def box_data(
    boxes: np.ndarray, labels: np.ndarray, names: dict[int, str], scores: np.ndarray | None = None
) -> list[dict]:
    """W&B ``box_data`` entries (pixel domain) for ``boxes [N, 4]`` xyxy with ``labels [N]``."""
    entries = []
    for i, ((x0, y0, x1, y1), label) in enumerate(zip(boxes.tolist(), labels.tolist(), strict=True)):
        name = names.get(int(label), str(label))
        entry = {
            "position": {"minX": x0, "minY": y0, "maxX": x1, "maxY": y1},
            "domain": "pixel",
            "class_id": int(label),
            "box_caption": name if scores is None else f"{name} {float(scores[i]):.2f}",
        }
        if scores is not None:
            entry["scores"] = {"score": float(scores[i])}
        entries.append(entry)
    return entries


def to_wandb_image(sample: ValidationSample, class_names: Sequence[str]) -> Any:
    """``wandb.Image`` with "predictions" and "ground_truth" mask and box layers."""
    import wandb

    names = class_labels(class_names)
    boxes = {
        "predictions": {
            "box_data": box_data(sample.pred_boxes, sample.pred_labels, names, sample.pred_scores),
            "class_labels": names,
        },
        "ground_truth": {"box_data": box_data(sample.gt_boxes, sample.gt_labels, names), "class_labels": names},
    }
    masks = None  # the dashboard callback warns once when there are too many classes for mask layers
    if max(names) < MAX_MASK_LABEL:
        masks = {
            "predictions": {"mask_data": sample.pred_label_map, "class_labels": names},
            "ground_truth": {"mask_data": sample.gt_label_map, "class_labels": names},
        }
    caption = f"image {sample.image_id}: {len(sample.gt_labels)} ground truth, {len(sample.pred_scores)} detections"
    return wandb.Image(sample.image, masks=masks, boxes=boxes, caption=caption)
