"""COCO segmentations to binary masks, and masks to boxes."""

from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as mask_utils

# pycocotools rasterises polygons on a grid upsampled 5x: vertex x becomes int(5 * x + 0.5).
_UPSAMPLE = 5
_MARGIN = 2  # pixels of crop around a polygon, so no crossing lands on the crop's edge


def decode_segmentation(
    segmentation: list | dict,
    height: int,
    width: int,
    out_size: tuple[int, int] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Rasterise a COCO polygon list, uncompressed RLE or compressed RLE.

    Args:
        segmentation: in the pixels of the ``height`` x ``width`` image of the json.
        out_size: ``(H', W')`` to rasterise at instead (a resized or reduced-scale image):
            polygons are scaled before rasterising (no full-size mask is ever built); RLE is
            decoded at full size and shrunk with nearest-neighbour sampling.
        out: optional zero-filled ``np.ndarray[H', W'] uint8`` to write into (saves a copy).
    Returns:
        mask: ``np.ndarray[H', W'] uint8`` in {0, 1} (``[height, width]`` by default).
    """
    out_h, out_w = out_size or (height, width)
    if isinstance(segmentation, list):
        sx, sy = out_w / width, out_h / height
        polygons = [np.asarray(poly, dtype=np.float64).reshape(-1, 2) * (sx, sy) for poly in segmentation]
        return rasterise_polygons(polygons, np.zeros((out_h, out_w), np.uint8) if out is None else out)
    if isinstance(segmentation["counts"], list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:  # compressed RLE; pycocotools accepts str or bytes counts
        rle = segmentation
    mask = mask_utils.decode(rle)
    if (out_h, out_w) != (height, width):
        mask = cv2.resize(mask, (out_w, out_h), interpolation=cv2.INTER_NEAREST)
    if out is None:
        return mask
    out[:] = mask
    return out


def rasterise_polygons(polygons: list[np.ndarray], out: np.ndarray) -> np.ndarray:
    """Fill the union of ``polygons`` into ``out`` as pycocotools would on the whole image, but
    rasterising only their bounding box.

    pycocotools' cost is proportional to the image area (it decodes every pixel); a COCO object
    typically covers a few percent of it. Shifting a polygon by whole pixels does not change
    pycocotools' result provided the shifted vertices round to the same upsampled grid points, so
    the shift is applied to the grid points themselves: a vertex is passed as ``n / 5`` with
    ``n = int(5 * x + 0.5) - 5 * offset``, which pycocotools maps back to exactly ``n``. An axis whose
    crop starts at 0 is not shifted at all (keeps negative coordinates' truncation semantics).
    The result is pycocotools' except where pycocotools' own rounding of an interpolated edge point
    depends on its absolute position (``x + 0.5`` near a tie rounds differently at x = 1000 than at
    x = 10): rarely, and then by one boundary pixel (tests/data/test_data.py measures it).

    Args:
        polygons: list of ``np.ndarray[V, 2] float64`` (x, y) vertices in ``out``'s pixels.
        out: ``np.ndarray[H, W] uint8``, zero-filled by the caller; written in place.
    Returns:
        out.
    """
    placed = polygon_crop(polygons, *out.shape)
    if placed is not None:
        top, left, crop = placed
        out[top : top + crop.shape[0], left : left + crop.shape[1]] |= crop
    return out


def polygon_crop(polygons: list[np.ndarray], height: int, width: int) -> tuple[int, int, np.ndarray] | None:
    """``rasterise_polygons`` on a ``height`` x ``width`` image, returned as the crop around the
    polygons that holds every pixel: ``(top, left, np.ndarray[h, w] uint8)``; None when the polygons
    lie outside the image."""
    polygons = [p for p in polygons if len(p) >= 3]  # validate_coco rejects these; be safe
    if not polygons:
        return None
    points = np.concatenate(polygons)
    if not np.isfinite(points).all():
        raise ValueError("polygon has non-finite coordinates")
    lo = np.maximum(np.floor(points.min(axis=0)) - _MARGIN, 0)
    hi = np.minimum(np.ceil(points.max(axis=0)) + _MARGIN + 1, (width, height))
    if (hi <= lo).any():  # entirely outside the image
        return None
    x0, y0 = int(lo[0]), int(lo[1])
    x1, y1 = int(hi[0]), int(hi[1])
    shifted = []
    for poly in polygons:
        poly = poly.copy()
        for axis, offset in ((0, x0), (1, y0)):
            if offset > 0:  # every vertex >= offset + margin > 0, so int() == floor()
                grid = np.floor(_UPSAMPLE * poly[:, axis] + 0.5) - _UPSAMPLE * offset
                poly[:, axis] = grid / _UPSAMPLE
        shifted.append(poly.ravel().tolist())
    rle = mask_utils.merge(mask_utils.frPyObjects(shifted, y1 - y0, x1 - x0))
    return y0, x0, mask_utils.decode(rle)


class SegmentationRaster:
    """The masks of one image's COCO segmentations, rasterised on demand: the mask source
    ``CocoInstanceDataset`` hands its transforms (``maskrcnn.data.transforms``).

    ``raster(h, w)`` is every mask at ``(h, w)``: ``np.ndarray[N, h, w] uint8``.
    ``raster.window(x0, y0, x1, y1)`` is every mask at the json's size restricted to that window,
    ``np.ndarray[N, y1 - y0, x1 - x0] uint8``, and each instance's area over the whole image
    (``np.ndarray[N] int64`` pixels), without building a full-size mask: a polygon is rasterised
    over its own bounding box only (RLE is decoded whole, one at a time). The window equals the
    same window of ``raster(height, width)``.
    """

    def __init__(self, segmentations: list, height: int, width: int) -> None:
        self.segmentations, self.height, self.width = segmentations, height, width

    def __len__(self) -> int:
        return len(self.segmentations)

    def __call__(self, height: int, width: int) -> np.ndarray:
        masks = np.zeros((len(self.segmentations), height, width), dtype=np.uint8)
        for k, seg in enumerate(self.segmentations):
            decode_segmentation(seg, self.height, self.width, out_size=(height, width), out=masks[k])
        return masks

    def window(self, x0: int, y0: int, x1: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
        # np.zeros: pages of instances outside the window are never written (nor resident)
        masks = np.zeros((len(self.segmentations), y1 - y0, x1 - x0), dtype=np.uint8)
        areas = np.zeros(len(self.segmentations), dtype=np.int64)
        for k, seg in enumerate(self.segmentations):
            if isinstance(seg, list):
                polygons = [np.asarray(poly, dtype=np.float64).reshape(-1, 2) for poly in seg]
                placed = polygon_crop(polygons, self.height, self.width)
            else:
                placed = (0, 0, decode_segmentation(seg, self.height, self.width))
            if placed is None:
                continue
            top, left, crop = placed
            areas[k] = int(np.count_nonzero(crop))
            r0, r1 = max(y0, top), min(y1, top + crop.shape[0])
            c0, c1 = max(x0, left), min(x1, left + crop.shape[1])
            if r0 < r1 and c0 < c1:
                masks[k, r0 - y0 : r1 - y0, c0 - x0 : c1 - x0] = crop[r0 - top : r1 - top, c0 - left : c1 - left]
        return masks, areas


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
    rows = np.any(masks, axis=2)  # [N, H]
    cols = np.any(masks, axis=1)  # [N, W]
    nonempty = rows.any(axis=1)
    h, w = masks.shape[1:]
    boxes[:, 0] = cols.argmax(axis=1)
    boxes[:, 1] = rows.argmax(axis=1)
    boxes[:, 2] = w - cols[:, ::-1].argmax(axis=1)
    boxes[:, 3] = h - rows[:, ::-1].argmax(axis=1)
    boxes[~nonempty] = 0
    return boxes
