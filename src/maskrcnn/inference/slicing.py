"""Sliced inference: a large image cut into overlapping tiles, each run at its own pixel size.

A 6000x4000 photo resized to the model's 1333 px shrinks a 20 px object to 4 px, below every
anchor. Here each tile enters the network at native resolution (``ImageTransform(resize=False)``),
so objects keep the size ``augmentation=tiles`` trains them at; an optional pass over the whole
image at the model's own scale finds the objects too large for a tile. Three separate steps:

- ``tile_grid``: where the tiles are (the network is not involved);
- ``detect_tiles`` / ``detect_full_image``: the network on tiles or on the image, detections
  shifted into full-image pixels, masks pasted as box-sized crops (``MaskCrop``), never as full-size
  masks;
- ``tile_merge.merge_detections``: duplicates across passes merged by mask (see there).

``sliced_detections`` chains them for one image; ``SlicedDetections.as_detection`` gives the
``Detection`` dict (RLE masks) that COCO evaluation and predict take.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from maskrcnn.inference.slice_options import SliceOptions
from maskrcnn.inference.tile_merge import MergedDetections, PassDetections, Window, merge_detections
from maskrcnn.modeling.mask_rcnn import MaskRCNN
from maskrcnn.modeling.postprocess import paste_mask_crops
from maskrcnn.modeling.structures import Detection
from maskrcnn.modeling.transform import map_boxes_to_original


def tile_starts(length: int, tile: int, overlap_px: int) -> list[int]:
    """First pixel of every tile along one axis of ``length`` pixels.

    Tiles start every ``tile - overlap_px`` pixels; the last one is moved back to end at the border,
    so every tile is ``tile`` long (when ``length >= tile``) and neighbours share at least
    ``overlap_px`` pixels. A ``length <= tile`` axis is one tile of ``length``.
    """
    if length <= tile:
        return [0]
    step = max(1, tile - overlap_px)
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]


def tile_grid(height: int, width: int, tile: int, overlap_px: int) -> list[Window]:
    """Windows ``(x0, y0, x1, y1)`` covering a ``height`` x ``width`` image, row by row."""
    rows, cols = tile_starts(height, tile, overlap_px), tile_starts(width, tile, overlap_px)
    return [(x, y, min(x + tile, width), min(y + tile, height)) for y in rows for x in cols]


def _run_network(net: MaskRCNN, images: list[Tensor], resize: bool) -> tuple[list[dict], list[tuple[int, int]]]:
    """``MaskRCNN.forward``'s inference path stopped before mask pasting (works on the
    ``inference=fast`` copy too). Returns one ``RoIDetection`` per image and the (h, w) it ran at."""
    batch, _ = net.transform(images, None, resize=resize)
    features = net.backbone(batch.tensors)
    proposals, _ = net.rpn(batch, features, None)
    detections, _ = net.roi_heads(features, proposals, batch.image_sizes, None)
    return detections, list(batch.image_sizes)


def detect_tiles(net: MaskRCNN, image: Tensor, windows: list[Window]) -> list[PassDetections]:
    """Run ``net`` on ``windows`` of ``image`` (Tensor[3, H, W] float in [0, 1]) in one batch, each
    tile at its pixel size. Boxes and mask crops are shifted into full-image pixels; each mask is
    pasted within its tile only (the network saw nothing beyond it)."""
    tiles = [image[:, y0:y1, x0:x1] for x0, y0, x1, y1 in windows]
    detections, _ = _run_network(net, tiles, resize=False)
    aligned = net.paste_aligned
    parts = []
    for (x0, y0, x1, y1), det in zip(windows, detections, strict=True):
        crops = paste_mask_crops(det["masks"], det["boxes"], (y1 - y0, x1 - x0), aligned=aligned)
        offset = torch.tensor([x0, y0, x0, y0], dtype=det["boxes"].dtype, device=det["boxes"].device)
        parts.append(
            PassDetections(
                window=(x0, y0, x1, y1),
                boxes=det["boxes"] + offset if (x0 or y0) else det["boxes"],
                labels=det["labels"],
                scores=det["scores"],
                crops=[c.shifted(y0, x0) for c in crops],
            )
        )
    return parts


def detect_full_image(net: MaskRCNN, image: Tensor, min_side: float = 0.0) -> PassDetections:
    """Run ``net`` on the whole ``image`` at the model's own scale (``model.transform``); keep the
    detections whose box is longer than ``min_side`` pixels on some side (smaller objects lie whole
    inside some tile, which sees them at native resolution)."""
    height, width = int(image.shape[-2]), int(image.shape[-1])
    detections, sizes = _run_network(net, [image], resize=True)
    det = detections[0]
    boxes = map_boxes_to_original(det["boxes"], sizes[0], (height, width))
    keep = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) > min_side
    aligned = net.paste_aligned
    return PassDetections(
        window=(0, 0, width, height),
        boxes=boxes[keep],
        labels=det["labels"][keep],
        scores=det["scores"][keep],
        crops=paste_mask_crops(det["masks"][keep], boxes[keep], (height, width), aligned=aligned),
        coarse=True,
    )


@dataclass
class SlicedDetections(MergedDetections):
    """``MergedDetections`` of an image of ``size`` (H, W), and the number of tiles that were run."""

    size: tuple[int, int] = (0, 0)
    tiles: int = 0

    def as_detection(self) -> Detection:
        """A ``Detection`` (boxes / labels / scores on the CPU) with COCO RLE masks of the full image."""
        height, width = self.size
        return {
            "boxes": self.boxes,
            "labels": self.labels,
            "scores": self.scores,
            "masks": [c.to_rle(height, width) for c in self.crops],
        }


@torch.inference_mode()
def sliced_detections(net: MaskRCNN, image: Tensor, options: SliceOptions) -> SlicedDetections:
    """Detections of ``net`` on ``image`` (Tensor[3, H, W] float in [0, 1], on the net's device)
    by tiles of ``options.tile_size`` (+ the full-image pass), merged; at most
    ``net.roi_heads.detections_per_img`` of them. An image that fits in one tile is one pass: the
    network's own detections at native resolution, unmerged."""
    height, width = int(image.shape[-2]), int(image.shape[-1])
    windows = tile_grid(height, width, options.tile_size, options.overlap_px)
    parts: list[PassDetections] = []
    for start in range(0, len(windows), options.tiles_per_batch):
        parts += detect_tiles(net, image, windows[start : start + options.tiles_per_batch])
    if options.full_image_pass and len(windows) > 1:
        parts.append(detect_full_image(net, image, min_side=options.overlap_px))
    roi_heads: Any = net.roi_heads
    merged = merge_detections(parts, options.merge_iou, int(roi_heads.detections_per_img))
    return SlicedDetections(merged.boxes, merged.labels, merged.scores, merged.crops, (height, width), len(windows))
