"""Conversion of network detections into compact COCO result rows.

A `Detection` (``maskrcnn.modeling.structures.Detection``) holds GPU tensors and, for masks, full-image probability
maps; keeping thousands of those until the end of validation would exhaust memory. The
evaluator therefore converts every detection immediately into an `ImageResults`: a few small
numpy arrays plus compressed RLE strings, which are also cheap to pickle for DDP gathering.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pycocotools import mask as mask_utils

# One binarisation (> MASK_THRESHOLD, torchvision's "> 0.5", so AP stays comparable with its
# published results) and one RLE encoder for the whole project.
from maskrcnn.modeling.postprocess import masks_to_rle

# pycocotools' ``mask.area`` sizes a scratch array with a uint8 (``np.array((n,), dtype=np.uint8)``),
# which numpy 2 rejects for n > 255 ("Python integer 300 out of bounds for uint8"): call it in
# chunks so that images with hundreds of detections (detections_per_img=300) evaluate.
_AREA_CHUNK = 255


@dataclass
class ImageResults:
    """COCO result rows of one image, stored column-wise.

    boxes: ndarray[D, 4] float64, xywh, absolute pixels of the original image
    scores: ndarray[D] float64
    category_ids: ndarray[D] int64, COCO category ids (not contiguous labels)
    rles: list of D COCO RLE dicts {"size": [H, W], "counts": str}, or None without masks
    mask_areas: ndarray[D] float64 pixel areas of the masks, or None without masks
    mask_boxes: ndarray[D, 4] float64 xywh tight boxes of the masks, or None without masks
    """

    boxes: np.ndarray
    scores: np.ndarray
    category_ids: np.ndarray
    rles: list[dict] | None = None
    mask_areas: np.ndarray | None = None
    mask_boxes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def rows(self, image_id: int, iou_type: str) -> list[dict]:
        """COCO result dicts of this image for `iou_type` ("bbox" or "segm").

        "area" is the quantity COCOeval uses for the area-range filter of unmatched detections:
        the box area for bbox evaluation and the mask area for segm evaluation, exactly what
        pycocotools' `loadRes` would fill in.
        """
        # One tolist() per column instead of per row: this runs for every detection of the split.
        scores, category_ids = self.scores.tolist(), self.category_ids.tolist()
        if iou_type == "bbox":
            return [
                {
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": box,
                    "score": score,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
                for box, score, cat in zip(self.boxes.tolist(), scores, category_ids, strict=True)
            ]
        if iou_type == "segm":
            if self.rles is None or self.mask_boxes is None or self.mask_areas is None:  # set together
                raise ValueError(f"image {image_id}: no masks were stored, cannot evaluate 'segm'")
            return [
                {
                    "image_id": image_id,
                    "category_id": cat,
                    "segmentation": dict(rle),
                    "bbox": box,
                    "score": score,
                    "area": area,
                    "iscrowd": 0,
                }
                for rle, box, area, score, cat in zip(
                    self.rles, self.mask_boxes.tolist(), self.mask_areas.tolist(), scores, category_ids, strict=True
                )
            ]
        raise ValueError(f"unsupported iou_type {iou_type!r}; expected 'bbox' or 'segm'")


def rle_areas(rles: list[dict]) -> np.ndarray:
    """Pixel areas of any number of COCO RLEs: ``ndarray[D] float64``."""
    if not rles:
        return np.zeros(0)
    chunks = [mask_utils.area(rles[i : i + _AREA_CHUNK]) for i in range(0, len(rles), _AREA_CHUNK)]
    return np.concatenate(chunks).astype(np.float64)


def _as_numpy(value: object, name: str, image_id: int) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise TypeError(f"image {image_id}: detection[{name!r}] must be a Tensor, got {type(value).__name__}")


def masks_to_rles(masks: object, image_id: int, image_size: tuple[int, int]) -> list[dict]:
    """Encode the masks of one image as compressed COCO RLEs (counts as str).

    masks: Tensor[D, 1, H, W] float probabilities (binarised with > MASK_THRESHOLD)
         | Tensor[D, 1, H, W] or [D, H, W] bool
         | list of D RLE dicts {"size": [H, W], "counts": str | bytes}
    image_size: (H, W) of the original image from the annotation file; masks must match it,
        since pasting masks at the wrong resolution is a silent AP killer.
    """
    height, width = image_size
    if isinstance(masks, (list, tuple)):
        rles = []
        for i, rle in enumerate(masks):
            if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
                raise TypeError(f"image {image_id}: masks[{i}] must be an RLE dict with 'size' and 'counts'")
            if list(rle["size"]) != [height, width]:
                raise ValueError(
                    f"image {image_id}: RLE mask {i} has size {list(rle['size'])}, "
                    f"annotation file says [{height}, {width}]"
                )
            counts = rle["counts"]
            if isinstance(counts, list):  # uncompressed RLE
                counts = mask_utils.frPyObjects(rle, height, width)["counts"]
            if isinstance(counts, bytes):
                counts = counts.decode("ascii")
            rles.append({"size": [height, width], "counts": counts})
        return rles
    if not isinstance(masks, torch.Tensor):
        raise TypeError(
            f"image {image_id}: detection['masks'] must be a Tensor or a list of RLE dicts, got {type(masks).__name__}"
        )
    if masks.dim() == 4:
        if masks.shape[1] != 1:
            raise ValueError(f"image {image_id}: masks must be [D, 1, H, W], got {tuple(masks.shape)}")
        masks = masks[:, 0]
    if masks.dim() != 3 or tuple(masks.shape[1:]) != (height, width):
        raise ValueError(
            f"image {image_id}: masks of shape {tuple(masks.shape)} do not match the original image "
            f"size ({height}, {width}) from the annotation file"
        )
    return masks_to_rle(masks[:, None])  # the one encoder (thresholds with > MASK_THRESHOLD)


def detection_to_results(
    detection: dict,
    image_id: int,
    category_lookup: np.ndarray,
    image_size: tuple[int, int],
    with_masks: bool,
) -> ImageResults:
    """Convert one `Detection` dict into `ImageResults`.

    detection: {"boxes": Tensor[D, 4] float32 xyxy original pixels, "labels": Tensor[D] int64
        contiguous, "scores": Tensor[D] float32, "masks": see `masks_to_rles` (needed if with_masks)}
    category_lookup: ndarray[K+1] int64, contiguous label -> COCO category id, -1 where unmapped
    image_size: (H, W) of the original image
    """
    for key in ("boxes", "labels", "scores"):
        if key not in detection:
            raise KeyError(f"image {image_id}: detection is missing key {key!r}")
    boxes = _as_numpy(detection["boxes"], "boxes", image_id).astype(np.float64).reshape(-1, 4)
    labels = _as_numpy(detection["labels"], "labels", image_id).astype(np.int64).reshape(-1)
    scores = _as_numpy(detection["scores"], "scores", image_id).astype(np.float64).reshape(-1)
    if not len(boxes) == len(labels) == len(scores):
        raise ValueError(
            f"image {image_id}: {len(boxes)} boxes, {len(labels)} labels and {len(scores)} scores differ in count"
        )
    bad = (labels < 0) | (labels >= len(category_lookup))
    if not bad.any():
        category_ids = category_lookup[labels]
        bad = category_ids < 0
    if bad.any():
        raise ValueError(
            f"image {image_id}: labels {sorted(set(labels[bad].tolist()))} have no entry in label_to_category_id"
        )
    xywh = boxes.copy()
    xywh[:, 2:] -= xywh[:, :2]
    result = ImageResults(boxes=xywh, scores=scores, category_ids=category_ids)
    if with_masks:
        if "masks" not in detection:
            raise KeyError(f"image {image_id}: detection has no 'masks' but 'segm' evaluation was requested")
        rles = masks_to_rles(detection["masks"], image_id, image_size)
        if len(rles) != len(scores):
            raise ValueError(f"image {image_id}: {len(rles)} masks for {len(scores)} detections")
        result.rles = rles
        result.mask_areas = rle_areas(rles)
        result.mask_boxes = mask_utils.toBbox(rles).astype(np.float64) if rles else np.zeros((0, 4))
    return result
