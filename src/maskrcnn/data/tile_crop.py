"""``augmentation=tiles``: a random window of the image at native resolution (no resize).

Training on tiles shows the network objects at the size sliced inference (``inference.slice``,
``maskrcnn.inference.slicing``) runs them at, on images far larger than the model's input. An
instance cut by the window keeps its visible part: its mask is cropped, and the dataset recomputes
its box from that mask (``CocoInstanceDataset``), so box and mask always agree. A remnant too small
to learn from is dropped (mask zeroed, so the dataset drops the instance): fewer than ``min_area``
visible pixels, or less than ``min_visibility`` of what the window could show of it (its whole
area, or the window's area for an object larger than the window). Instances the window does not
cut are kept whatever their size.

The window is drawn with albumentations' random state (``set_random_seed``), so the per-item
augmentation seeds (``data.sampler.sample_seed``) make a tile reproducible like any other op.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

# albumentations otherwise queries PyPI for a newer version at import time (slow / offline nodes).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402

Window = tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels


class WindowRaster(Protocol):
    """What ``TileCrop.crop`` asks a mask source for (``data.readers.masks.SegmentationRaster``)."""

    def window(self, x0: int, y0: int, x1: int, y1: int) -> tuple[np.ndarray, np.ndarray]: ...


class TileCrop(A.DualTransform):
    """A random ``size`` x ``size`` window (shorter along an image side below ``size``).

    Args:
        size: window side in image pixels.
        min_area: a cut instance with fewer visible pixels is dropped.
        min_visibility: a cut instance with less than this share of ``min(its area, window area)``
            visible is dropped.
    """

    def __init__(self, size: int, min_area: int = 16, min_visibility: float = 0.25, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.size, self.min_area, self.min_visibility = int(size), int(min_area), float(min_visibility)

    def window(self, height: int, width: int) -> Window:
        """Draw the window for a ``height`` x ``width`` image (uniform over every position)."""
        th, tw = min(self.size, height), min(self.size, width)
        y0 = int((height - th) * self.py_random.random())
        x0 = int((width - tw) * self.py_random.random())
        return x0, y0, x0 + tw, y0 + th

    def drop_remnants(self, masks: np.ndarray, areas: np.ndarray, window: Window) -> np.ndarray:
        """Zero (in place) the masks ``uint8 [N, h, w]`` of cut instances too small to keep;
        ``areas`` ``[N]`` are their whole areas in pixels."""
        if not len(masks):
            return masks
        visible = np.count_nonzero(masks.reshape(len(masks), -1), axis=1)
        could_show = np.minimum(areas, (window[2] - window[0]) * (window[3] - window[1]))
        cut = visible < areas
        drop = cut & ((visible < self.min_area) | (visible < self.min_visibility * could_show))
        masks[drop] = 0
        return masks

    def crop(self, image: np.ndarray, masks: np.ndarray | WindowRaster) -> tuple[np.ndarray, np.ndarray]:
        """Crop ``image`` ``uint8 [H, W, 3]`` and its instance masks (``uint8 [N, H, W]``, or a raster
        that builds them inside the window only) at a newly drawn window; remnants dropped."""
        window = self.window(*image.shape[:2])
        x0, y0, x1, y1 = window
        if isinstance(masks, np.ndarray):
            return self.apply(image, window), self.apply_to_masks(masks, window)
        cropped, areas = masks.window(x0, y0, x1, y1)
        return image[y0:y1, x0:x1], self.drop_remnants(cropped, areas, window)

    # albumentations' interface: TileCrop also works inside ``A.Compose`` on full-size masks.
    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        return {"window": self.window(*params["shape"][:2])}

    def apply(self, img: np.ndarray, window: Window = (0, 0, 0, 0), **params: Any) -> np.ndarray:
        x0, y0, x1, y1 = window
        return img[y0:y1, x0:x1]

    def apply_to_mask(self, mask: np.ndarray, window: Window = (0, 0, 0, 0), **params: Any) -> np.ndarray:
        return self.apply(mask, window)

    def apply_to_masks(self, masks: np.ndarray, window: Window = (0, 0, 0, 0), **params: Any) -> np.ndarray:
        masks = np.asarray(masks)
        x0, y0, x1, y1 = window
        areas = np.count_nonzero(masks.reshape(len(masks), -1), axis=1)
        return self.drop_remnants(np.ascontiguousarray(masks[:, y0:y1, x0:x1]), areas, window)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size", "min_area", "min_visibility")
