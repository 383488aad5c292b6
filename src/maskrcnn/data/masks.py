"""COCO segmentations to binary masks, and masks to boxes."""

from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as mask_utils


def decode_segmentation(
    segmentation: list | dict, height: int, width: int, out_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Rasterise a COCO polygon list, uncompressed RLE or compressed RLE.

    Args:
        segmentation: in the pixels of the ``height`` x ``width`` image of the json.
        out_size: ``(H', W')`` to rasterise at instead (an image decoded at reduced scale):
            polygons are scaled before rasterising (no full-size mask is ever built); RLE is
            decoded at full size and shrunk with nearest-neighbour sampling.
    Returns:
        mask: ``np.ndarray[H', W'] uint8`` in {0, 1} (``[height, width]`` by default).
    """
    out_h, out_w = out_size or (height, width)
    if (out_h, out_w) != (height, width):
        if isinstance(segmentation, list):
            sx, sy = out_w / width, out_h / height
            scaled = [[v * (sx if i % 2 == 0 else sy) for i, v in enumerate(poly)] for poly in segmentation]
            return decode_segmentation(scaled, out_h, out_w)
        full = decode_segmentation(segmentation, height, width)
        return cv2.resize(full, (out_w, out_h), interpolation=cv2.INTER_NEAREST)
    if isinstance(segmentation, list):  # polygons: one RLE per part, merged into one mask
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:  # compressed RLE; pycocotools accepts str or bytes counts
        rle = segmentation
    return mask_utils.decode(rle).astype(np.uint8, copy=False)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes around binary masks.

    Args:
        masks: ``np.ndarray[N, H, W]`` (any dtype, nonzero = foreground).
    Returns:
        boxes: ``np.ndarray[N, 4] float32``, xyxy, absolute pixels, pixel-edge convention
        (x1 = last foreground column + 1, like COCO's ``bbox`` w = max - min + 1).
        Rows of empty masks are zeros.
    """
    n = masks.shape[0]
    boxes = np.zeros((n, 4), dtype=np.float32)
    if n == 0:
        return boxes
    rows = masks.any(axis=2)  # [N, H]
    cols = masks.any(axis=1)  # [N, W]
    nonempty = rows.any(axis=1)
    h, w = masks.shape[1:]
    boxes[:, 0] = cols.argmax(axis=1)
    boxes[:, 1] = rows.argmax(axis=1)
    boxes[:, 2] = w - cols[:, ::-1].argmax(axis=1)
    boxes[:, 3] = h - rows[:, ::-1].argmax(axis=1)
    boxes[~nonempty] = 0
    return boxes
