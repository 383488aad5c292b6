"""Merging the detections of several passes over one image (tiles, the full image) into one list.

An object near a tile border is seen by two or four tiles: whole by one and cut by the others, or
cut by all when it is larger than the overlap. Duplicates are found by their masks *within the
region both passes saw*: there both saw the same pixels, so two detections of one object agree
(mask IoU high), while two neighbouring objects do not, whatever part of them lies outside. So
an object cut by a tile border becomes one detection even when no tile saw it whole. Detections of
one pass are never merged with each other: the network's own NMS already chose among them, and a
single pass (one tile covering the image) is returned unchanged.

Greedy, in decreasing score: the best unmerged detection starts a group; a detection of the same
class from a pass not yet in the group joins when its window IoU with a member reaches
``iou_thresh`` (so a chain of tiles along a long object joins up). The group keeps the best score
and label, the union of the members' boxes, and the union of their masks, where a coarse pass
(the full image at the model's scale) contributes only outside the windows of the fine ones that
joined (there the tiles saw the object at native resolution).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from maskrcnn.modeling.mask_crops import MaskCrop

Window = tuple[int, int, int, int]  # x0, y0, x1, y1: pixel columns x0..x1-1, rows y0..y1-1 of the full image


@dataclass
class PassDetections:
    """The detections of one pass, in full-image pixels.

    Attributes:
        window: the part of the image the pass saw (a tile, or the whole image).
        boxes: Tensor[D, 4] float32, xyxy, absolute pixels of the full image.
        labels: Tensor[D] int64 in 1..K.
        scores: Tensor[D] float32.
        crops: D ``MaskCrop``s in full-image pixels, each inside ``window``.
        coarse: the pass saw the image at a lower scale than the others (the full-image pass).
    """

    window: Window
    boxes: Tensor
    labels: Tensor
    scores: Tensor
    crops: list[MaskCrop] = field(default_factory=list)
    coarse: bool = False


def _intersect(a: Window, b: Window) -> Window | None:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def _inside(crop: MaskCrop, window: Window) -> np.ndarray:
    """The part of ``crop.mask`` inside ``window`` (possibly empty), with its window-relative offset lost."""
    x0, y0, x1, y1 = window
    r0, r1 = max(y0 - crop.top, 0), max(min(y1, crop.bottom) - crop.top, 0)
    c0, c1 = max(x0 - crop.left, 0), max(min(x1, crop.right) - crop.left, 0)
    return crop.mask[r0:r1, c0:c1]


def window_iou(a: MaskCrop, b: MaskCrop, window: Window) -> float:
    """IoU of two masks counting only the pixels inside ``window``; 0 when both are empty there."""
    area_a, area_b = int(np.count_nonzero(_inside(a, window))), int(np.count_nonzero(_inside(b, window)))
    if area_a == 0 or area_b == 0:
        return 0.0
    common = _intersect(
        window, (max(a.left, b.left), max(a.top, b.top), min(a.right, b.right), min(a.bottom, b.bottom))
    )
    inter = 0 if common is None else int(np.count_nonzero(_inside(a, common) & _inside(b, common)))
    return inter / (area_a + area_b - inter)


def _union_mask(members: list[int], crops: list[MaskCrop], windows: list[Window], coarse: list[bool]) -> MaskCrop:
    """Union of the members' masks; a coarse member's pixels only outside the fine members' windows."""
    parts = [crops[m] for m in members if crops[m].mask.size]
    if not parts:
        return MaskCrop(0, 0, np.zeros((0, 0), dtype=bool))
    top, left = min(c.top for c in parts), min(c.left for c in parts)
    bottom, right = max(c.bottom for c in parts), max(c.right for c in parts)
    out = np.zeros((bottom - top, right - left), dtype=bool)
    covered = np.zeros_like(out)
    for m in members:
        if not coarse[m]:
            x0, y0, x1, y1 = windows[m]
            covered[max(y0 - top, 0) : max(y1 - top, 0), max(x0 - left, 0) : max(x1 - left, 0)] = True
    for m in members:
        c = crops[m]
        if not c.mask.size:
            continue
        region = (slice(c.top - top, c.bottom - top), slice(c.left - left, c.right - left))
        out[region] |= c.mask & ~covered[region] if coarse[m] else c.mask
    return MaskCrop(top, left, out)


@dataclass
class MergedDetections:
    """One image's detections after merging, in decreasing score (the fields of ``PassDetections``)."""

    boxes: Tensor
    labels: Tensor
    scores: Tensor
    crops: list[MaskCrop]


def merge_detections(parts: list[PassDetections], iou_thresh: float, max_detections: int) -> MergedDetections:
    """Merge the passes' detections (see the module docstring); keep the ``max_detections`` best.

    Returns boxes Tensor[D, 4] float32 (a group's: the union of its members' boxes), labels
    Tensor[D] int64, scores Tensor[D] float32 in decreasing order and D ``MaskCrop``s; on the CPU.
    """
    boxes = torch.cat([p.boxes.detach().cpu().float() for p in parts]) if parts else torch.zeros((0, 4))
    labels = torch.cat([p.labels.cpu() for p in parts]) if parts else torch.zeros(0, dtype=torch.int64)
    scores = torch.cat([p.scores.detach().cpu().float() for p in parts]) if parts else torch.zeros(0)
    crops = [c for p in parts for c in p.crops]
    source = np.concatenate([np.full(len(p.scores), i) for i, p in enumerate(parts)]) if parts else np.zeros(0, int)
    windows = [p.window for p in parts for _ in range(len(p.scores))]
    coarse = [p.coarse for p in parts for _ in range(len(p.scores))]
    order = torch.sort(scores, descending=True, stable=True).indices.numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    box, label = boxes.numpy().astype(np.float64), labels.numpy()
    group_of = np.full(len(order), -1)
    groups: list[list[int]] = []
    for first in order.tolist():
        if group_of[first] >= 0:
            continue
        members, queue, passes = [first], [first], {int(source[first])}
        group_of[first] = len(groups)
        while queue:
            m = queue.pop(0)
            # same class, another pass, boxes that touch: only those masks can overlap
            near = (
                (group_of < 0)
                & (label == label[m])
                & (box[:, 0] < box[m, 2])
                & (box[:, 2] > box[m, 0])
                & (box[:, 1] < box[m, 3])
                & (box[:, 3] > box[m, 1])
            )
            candidates = np.flatnonzero(near)
            for j in candidates[np.argsort(rank[candidates])].tolist():  # best score first
                if int(source[j]) in passes:
                    continue
                common = _intersect(windows[m], windows[j])
                if common is not None and window_iou(crops[m], crops[j], common) >= iou_thresh:
                    group_of[j] = len(groups)
                    members.append(j)
                    queue.append(j)
                    passes.add(int(source[j]))
        groups.append(members)
    kept = groups[:max_detections]  # groups are in the order of their best score
    union = [torch.cat([boxes[g, :2].min(0).values, boxes[g, 2:].max(0).values]) for g in kept]
    return MergedDetections(
        boxes=torch.stack(union) if kept else torch.zeros((0, 4)),
        labels=labels[[g[0] for g in kept]],
        scores=scores[[g[0] for g in kept]],
        crops=[crops[g[0]] if len(g) == 1 else _union_mask(g, crops, windows, coarse) for g in kept],
    )
