"""Albumentations pipelines that keep an image and its instance masks in sync.

Contract of every pipeline returned here (and of ``CocoInstanceDataset(transforms=...)``):
``pipeline(image, masks) -> (image, masks)`` with
    image: ``np.ndarray[H, W, 3] uint8`` RGB,
    masks: ``np.ndarray[N, H, W] uint8`` in {0, 1} (N may be 0).
``masks`` may instead be a callable ``(height, width) -> np.ndarray[N, height, width] uint8``: a
pipeline that starts with a resize then rasterises the polygons straight at the resized size
(as detectron2 transforms polygons before rasterising) instead of resizing full-size masks, so no
full-size mask is built. Pipelines that accept a callable have
``accepts_mask_fn = True``; ``CocoInstanceDataset`` passes one only to those.
Boxes are NOT transformed here: the dataset recomputes them from the transformed masks and drops
instances whose mask became empty, so boxes, labels and masks can never disagree.

Resizing happens first in every training pipeline, so later (photometric) ops run on the small
image even when the file is huge. 16-bit files are converted to 8-bit by the image loader.

Validation (``train=False``) pipelines do NOT resize: the model resizes in eval mode and maps its
predictions back to the original pixels, so COCO evaluation runs against the json unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, cast

# albumentations otherwise queries PyPI for a newer version at import time (slow / offline nodes).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from maskrcnn.data.tile_crop import TileCrop  # noqa: E402

AUGMENTATIONS = ("none", "hflip", "default", "multiscale", "lsj", "photometric", "tiles")
# Options whose data pipeline never resizes: images reach the model at file size (tiles: windows of it).
NO_RESIZE_AUGMENTATIONS = ("none", "hflip", "tiles")


def _resize(array: np.ndarray, scale: float, interpolation: int) -> np.ndarray:
    h, w = array.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2 wants (width, height)
    if size == (w, h):
        return array
    return cv2.resize(array, size, interpolation=interpolation)


class _ScaleResize(A.DualTransform):
    """Base for aspect-preserving resizes; subclasses choose the scale factor per call."""

    def __init__(self, p: float = 1.0) -> None:
        super().__init__(p=p)

    def _scale(self, height: int, width: int) -> float:
        raise NotImplementedError

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        return {"scale": self._scale(height, width)}

    def apply(self, img: np.ndarray, scale: float = 1.0, **params: Any) -> np.ndarray:
        # INTER_AREA avoids aliasing when shrinking by a lot (e.g. 10000 px scans).
        return _resize(img, scale, cv2.INTER_AREA if scale < 0.5 else cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, scale: float = 1.0, **params: Any) -> np.ndarray:
        return _resize(mask, scale, cv2.INTER_NEAREST)

    def apply_to_masks(self, masks: np.ndarray, scale: float = 1.0, **params: Any) -> np.ndarray:
        # One multi-channel resize instead of one call per instance (cv2 takes <= 512 channels);
        # nearest-neighbour treats channels independently, so the result is identical.
        masks = np.asarray(masks)
        if not 0 < len(masks) <= 512:
            return np.stack([self.apply_to_mask(m, scale) for m in masks]) if len(masks) else masks
        stacked = _resize(np.ascontiguousarray(masks.transpose(1, 2, 0)), scale, cv2.INTER_NEAREST)
        return stacked.reshape(*stacked.shape[:2], len(masks)).transpose(2, 0, 1)


class ResizeShortestEdge(_ScaleResize):
    """Scale so the short side equals a size drawn from ``min_sizes``, unless the long side would
    exceed ``max_size`` (then the long side equals ``max_size``) — torchvision / detectron2 rule."""

    def __init__(self, min_sizes: Sequence[int], max_size: int, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.min_sizes = [int(s) for s in min_sizes]
        self.max_size = int(max_size)

    def _scale(self, height: int, width: int) -> float:
        short = self.py_random.choice(self.min_sizes)
        return min(short / min(height, width), self.max_size / max(height, width))

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_sizes", "max_size")


class ResizeScale(_ScaleResize):
    """Large-scale jitter resize: fit the image into ``output_size * s`` square, s ~ U(scale_range)."""

    def __init__(self, output_size: int, scale_range: tuple[float, float] = (0.1, 2.0), p: float = 1.0) -> None:
        super().__init__(p=p)
        self.output_size = int(output_size)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))

    def _scale(self, height: int, width: int) -> float:
        target = self.output_size * self.py_random.uniform(*self.scale_range)
        return min(target / height, target / width)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("output_size", "scale_range")


class HorizontalFlipMasks(A.HorizontalFlip):
    """``A.HorizontalFlip`` (same parameters and random draws) that flips a stack of instance masks
    in one OpenCV call: a horizontal flip reverses each row, so the ``[N, H, W]`` stack is flipped
    as one ``[N*H, W]`` image. Same output as flipping mask by mask and stacking."""

    def apply_to_masks(self, masks: np.ndarray, *args: Any, **params: Any) -> np.ndarray:
        masks = np.asarray(masks)
        n, h, w = masks.shape if masks.ndim == 3 else (0, 0, 0)
        if n == 0 or masks.dtype != np.uint8 or not masks.flags.c_contiguous or masks.size >= 2**31:
            return super().apply_to_masks(masks, *args, **params)
        return cv2.flip(masks.reshape(n * h, w), 1).reshape(n, h, w)


class InstanceAugment:
    """Callable ``(image uint8 [H,W,3], masks) -> (image, masks uint8 [N,H',W'])`` around ``A.Compose``.

    ``masks`` is an array ``uint8 [N,H,W]`` or a callable ``(H', W') -> uint8 [N,H',W']`` (see the
    module docstring). A leading resize op (``ResizeShortestEdge`` / ``ResizeScale``) is run here,
    outside ``A.Compose``, so that a callable is asked for its masks at the resized size; a leading
    ``TileCrop`` asks it (``SegmentationRaster.window``) for the crop window only.
    """

    accepts_mask_fn = True

    def __init__(self, ops: list[A.BasicTransform], seed: int | None = None) -> None:
        self.resize = ops[0] if ops and isinstance(ops[0], _ScaleResize) and ops[0].p >= 1 else None
        self.crop = ops[0] if ops and isinstance(ops[0], TileCrop) else None
        self.compose = A.Compose(ops[1:] if self.resize is not None or self.crop is not None else ops)
        # Drawn from torch's RNG so that seed_everything() makes augmentation reproducible.
        self.set_seed(int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else seed)

    def set_seed(self, seed: int) -> None:
        """Reseed every random op. DataLoader workers must call this with distinct seeds (see
        ``maskrcnn.data.batching.seed_worker``): forked workers otherwise share one RNG state and
        would all produce the same augmentation sequence."""
        self.compose.set_random_seed(seed)
        for lead in (self.resize, self.crop):
            if lead is not None:
                lead.set_random_seed(seed + 1)  # its own stream, independent of the others

    def __call__(
        self, image: np.ndarray, masks: np.ndarray | Callable[[int, int], np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.crop is not None:  # masks: an array, or a SegmentationRaster (it has .window)
            return self._compose_present(*self.crop.crop(image, cast(Any, masks)))
        if self.resize is not None:
            scale = self.resize._scale(*image.shape[:2])
            image = self.resize.apply(image, scale=scale)
            if not callable(masks):
                masks = self.resize.apply_to_masks(masks, scale=scale) if len(masks) else masks
        if callable(masks):
            masks = masks(*image.shape[:2])
        if len(masks) == 0:  # albumentations cannot stack an empty mask list
            out = self.compose(image=image)
            return out["image"], np.zeros((0, *out["image"].shape[:2]), dtype=np.uint8)
        out = self.compose(image=image, masks=masks)
        return out["image"], np.asarray(out["masks"], dtype=np.uint8)

    def _compose_present(self, image: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ops after a tile crop, run on the instances the tile holds; the others stay all-zero
        (most instances of a large image are outside the tile: their pages are never written)."""
        present = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))
        if len(present) == 0:
            return self.compose(image=image)["image"], masks
        out = self.compose(image=image, masks=masks[present])
        result = np.zeros(masks.shape, dtype=np.uint8)
        result[present] = np.asarray(out["masks"], dtype=np.uint8)
        return out["image"], result

    def __repr__(self) -> str:
        return f"InstanceAugment(resize={self.resize!r}, crop={self.crop!r}, then {self.compose!r})"


def default_multiscale_sizes(min_size: int) -> list[int]:
    """detectron2's multi-scale choices scaled to ``min_size``: 80%..100% in 6 steps (800 -> 640..800)."""
    return sorted({round(min_size * f) for f in (0.8, 0.84, 0.88, 0.92, 0.96, 1.0)})


def build_transforms(
    name: str,
    train: bool,
    min_size: int = 800,
    max_size: int = 1333,
    multiscale_sizes: Sequence[int] | None = None,
    lsj_size: int = 1024,
    lsj_scale: tuple[float, float] = (0.1, 2.0),
    hflip_prob: float = 0.5,
    tile_size: int = 800,
    tile_min_area: int = 16,
    tile_min_visibility: float = 0.25,
) -> InstanceAugment | None:
    """Build a named pipeline (see module docstring for the contract).

    Args:
        name: one of ``AUGMENTATIONS``:
            "none" — no change (the dataset only converts to a tensor);
            "hflip" — horizontal flip only, no resize (for models that resize in training,
            ``model.transform.resize_in_training=true``, as torchvision's do);
            "default" — resize short side to ``min_size`` (long side <= ``max_size``) + h-flip;
            "multiscale" — like default with the short side drawn from ``multiscale_sizes``
            (defaults to 80%..100% of ``min_size`` in 6 steps);
            "lsj" — large-scale jitter: fit into ``lsj_size * U(lsj_scale)``, pad (top-left, zeros)
            and random-crop to a ``lsj_size`` square, + h-flip;
            "photometric" — default + colour jitter;
            "tiles" — a random ``tile_size`` window at native resolution (no resize) + h-flip; cut
            instances keep their visible part unless it is below ``tile_min_area`` pixels or
            ``tile_min_visibility`` (``maskrcnn.data.tile_crop``).
        train: False returns None (identity): eval images keep their original size.
    Returns:
        an ``InstanceAugment`` or None for the identity.
    """
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; expected one of {AUGMENTATIONS}")
    if not train or name == "none":
        return None
    flip = HorizontalFlipMasks(p=hflip_prob)
    if name == "hflip":
        return InstanceAugment([flip])
    if name == "lsj":
        return InstanceAugment(
            [
                ResizeScale(lsj_size, lsj_scale),
                A.PadIfNeeded(
                    lsj_size, lsj_size, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0
                ),
                A.RandomCrop(lsj_size, lsj_size),
                flip,
            ]
        )
    if name == "tiles":
        return InstanceAugment([TileCrop(tile_size, tile_min_area, tile_min_visibility), flip])
    if name == "multiscale":
        sizes = multiscale_sizes or default_multiscale_sizes(min_size)
        return InstanceAugment([ResizeShortestEdge(sizes, max_size), flip])
    ops: list[A.BasicTransform] = [ResizeShortestEdge([min_size], max_size), flip]
    if name == "photometric":
        ops.append(A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, p=0.8))
    return InstanceAugment(ops)
