"""A binary mask held as the crop that holds its pixels, placed in a full-size image.

``postprocess.paste_mask_crops`` pastes each detection over the image pixels its weights reach;
the rest of a full-size mask is zero. Keeping only that crop costs the area of the box instead of
the image (a 24-megapixel photo with 300 detections), and the full-image COCO RLE is written from
the crop directly (``MaskCrop.to_rle``), so no full-size mask is ever built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils


@dataclass
class MaskCrop:
    """A mask that is zero outside ``mask``.

    Attributes:
        top, left: image pixel of ``mask[0, 0]`` (row, column).
        mask: ``np.ndarray[h, w] bool``; ``h`` or ``w`` may be 0 (an empty mask).
    """

    top: int
    left: int
    mask: np.ndarray

    @property
    def bottom(self) -> int:
        """One past the last row: the crop covers rows ``top .. bottom - 1``."""
        return self.top + self.mask.shape[0]

    @property
    def right(self) -> int:
        """One past the last column."""
        return self.left + self.mask.shape[1]

    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    def shifted(self, rows: int, cols: int) -> MaskCrop:
        """The same crop ``rows`` lower and ``cols`` further right (a tile's mask in the full image)."""
        return MaskCrop(self.top + rows, self.left + cols, self.mask)

    def box(self) -> tuple[float, float, float, float] | None:
        """Tight box ``(x1, y1, x2, y2)`` of the mask pixels, pixel-edge convention (x2 = last column
        + 1, as ``data.readers.masks.masks_to_boxes``); None for an empty mask."""
        rows, cols = np.flatnonzero(self.mask.any(axis=1)), np.flatnonzero(self.mask.any(axis=0))
        if not len(rows):
            return None
        return (
            float(self.left + cols[0]),
            float(self.top + rows[0]),
            float(self.left + cols[-1] + 1),
            float(self.top + rows[-1] + 1),
        )

    def to_rle(self, height: int, width: int) -> dict:
        """Compressed COCO RLE ``{"size": [height, width], "counts": str}`` of the full-size mask.

        The crop must lie inside the image."""
        if not (0 <= self.top and 0 <= self.left and self.bottom <= height and self.right <= width):
            raise ValueError(
                f"MaskCrop rows {self.top}..{self.bottom}, columns {self.left}..{self.right} "
                f"outside a {height}x{width} image"
            )
        runs = [height * width] if self.mask.size == 0 else column_runs(self.mask, self.top, self.left, height, width)
        rle = mask_utils.frPyObjects({"size": [height, width], "counts": runs}, height, width)
        return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def column_runs(crop: np.ndarray, top: int, left: int, height: int, width: int) -> list[int]:
    """Uncompressed COCO RLE counts (column-major, starting with zeros) of an H x W mask that is
    zero except for ``crop`` (``ndarray[h, w] bool``) placed at row ``top``, column ``left``."""
    strip = np.zeros((crop.shape[1], height), dtype=bool)  # the crop's columns, full height
    strip[:, top : top + crop.shape[0]] = crop.T
    flat = strip.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], change, [flat.size]))).tolist()
    if flat[0]:
        runs.insert(0, 0)  # counts start with a (here empty) run of zeros
    runs[0] += left * height  # the columns left of the crop
    after = (width - left - crop.shape[1]) * height  # and right of it
    if len(runs) % 2:  # the last run is zeros
        runs[-1] += after
    elif after:
        runs.append(after)
    return runs


def crops_to_masks(crops: list[MaskCrop], image_size: tuple[int, int], out_size: tuple[int, int]) -> np.ndarray:
    """The crops' full masks of an ``image_size`` (H, W) image, sampled nearest-neighbour onto an
    ``out_size`` (h, w) grid (drawing overlays of a large image at a reduced size).

    Returns:
        ``np.ndarray[D, h, w] bool``: pixel ``(r, c)`` is the mask at image pixel
        ``(floor((r + 0.5) * H / h), floor((c + 0.5) * W / w))``.
    """
    (height, width), (h, w) = image_size, out_size
    rows = np.minimum(((np.arange(h) + 0.5) * height / h).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * width / w).astype(np.int64), width - 1)
    out = np.zeros((len(crops), h, w), dtype=bool)
    for k, crop in enumerate(crops):
        r = np.flatnonzero((rows >= crop.top) & (rows < crop.bottom))
        c = np.flatnonzero((cols >= crop.left) & (cols < crop.right))
        if len(r) and len(c):
            out[k, r[0] : r[-1] + 1, c[0] : c[-1] + 1] = crop.mask[np.ix_(rows[r] - crop.top, cols[c] - crop.left)]
    return out
