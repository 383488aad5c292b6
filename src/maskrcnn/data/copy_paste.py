"""``copy_paste=simple``: Simple Copy-Paste augmentation (Ghiasi et al. 2021) on training items.

A random subset of the instances of another training image (the *source*, already through the
training transforms with its own seed) is rescaled by a random factor, placed at a random offset
and pasted over the *target* image. What the pasted pixels cover is removed from the target's
masks (instances and crowd regions alike); a target instance covered completely disappears, a
partly covered one keeps its visible part, and the dataset recomputes every box from the updated
masks (``CocoInstanceDataset``), so boxes never disagree with masks. Crowd regions of the source
are never pasted: only its instances are candidates. Pasting is a hard cut-out without blending,
which the paper found as good as a blurred alpha.

All draws come from the ``numpy.random.Generator`` the caller passes; the dataset seeds it per
training item (``data.sampler.sample_seed``), so a pasted item is the same in a resumed run, with
any number of loader workers and on any DDP rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeGuard

import cv2
import numpy as np

from maskrcnn.errors import ConfigError


class Instances(NamedTuple):
    """One transformed training item, before its boxes are computed.

    image: ``np.ndarray[H, W, 3] uint8`` RGB.
    masks: ``np.ndarray[N, H, W] uint8`` in {0, 1}, the instances.
    labels: ``np.ndarray[N] int64`` in 1..K.
    crowd_masks: ``np.ndarray[M, H, W] uint8`` in {0, 1}, the crowd regions.
    """

    image: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    crowd_masks: np.ndarray


def _number(v: object) -> TypeGuard[float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _whole(v: object) -> TypeGuard[float]:
    return _number(v) and float(v).is_integer()


def _scale_range(v: object) -> bool:
    if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(_number(x) for x in v):
        return False
    return 0 < v[0] <= v[1]


# key below copy_paste -> (what its value must be, in words; the check): CopyPaste checks its values
# with these, and the config check (training.config_types) names the key with the same words.
COPY_PASTE_RULES: dict[str, tuple[str, Callable[[object], bool]]] = {
    "prob": ("in [0, 1] (0: off)", lambda v: _number(v) and 0 <= v <= 1),
    "max_instances": ("a positive integer", lambda v: _whole(v) and v >= 1),
    "scale_range": ("[low, high] with 0 < low <= high", _scale_range),
    "attempts": ("a positive integer", lambda v: _whole(v) and v >= 1),
}


@dataclass(frozen=True)
class CopyPaste:
    """Paste instances of a source item onto a target item.

    Args:
        prob: chance that a training item gets instances pasted (0 turns copy-paste off).
        max_instances: at most this many source instances are pasted; the count is uniform in
            ``1..min(max_instances, source instances)``, the instances a random subset.
        scale_range: the source is rescaled by a factor drawn uniformly from this range before it
            is placed (the paper's scale jitter, relative to the training scale both items have).
        attempts: source images drawn at most, when a drawn source has no instance (an empty
            image or tile), before the item stays unpasted.
    """

    prob: float = 0.5
    max_instances: int = 20
    scale_range: tuple[float, float] = (0.5, 1.5)
    attempts: int = 3

    def __post_init__(self) -> None:
        for key, (what, ok) in COPY_PASTE_RULES.items():
            value = getattr(self, key)
            if not ok(value):
                raise ValueError(f"copy_paste.{key} must be {what}, got {value!r}")

    @classmethod
    def from_config(cls, options: dict | None) -> CopyPaste | None:
        """The ``copy_paste`` config group's values as a CopyPaste (None: off, ``prob`` 0), or a
        ConfigError naming the key."""
        if not options or not options.get("prob"):
            return None
        try:
            kwargs: dict[str, Any] = {k: tuple(v) if k == "scale_range" else v for k, v in options.items()}
            return cls(**kwargs)
        except TypeError as exc:  # an unknown key
            raise ConfigError(f"copy_paste: {exc}") from exc
        except ValueError as exc:  # a bad value; the message names its key
            raise ConfigError(str(exc)) from exc

    def paste_another(
        self,
        item: Instances,
        index: int,
        num_items: int,
        load: Callable[[int, int], Instances | None],
        rng: np.random.Generator,
    ) -> Instances:
        """``item`` (training item ``index`` of ``num_items``) with instances of another item pasted.

        The source index and its augmentation seed are drawn from ``rng``; ``load(index, seed)``
        gives that item transformed (None: unreadable and skipped). A source without instances,
        or unreadable, is redrawn up to ``attempts`` times; then ``item`` stays as it is.
        """
        for _ in range(self.attempts):
            other = int(rng.integers(0, num_items - 1))
            other += other >= index  # any item but the target itself
            source = load(other, int(rng.integers(0, 2**31 - 1)))
            if source is not None and len(source.labels):
                return self.paste(item, source, rng)
        return item

    def paste(self, target: Instances, source: Instances, rng: np.random.Generator) -> Instances:
        """``target`` with a random subset of ``source``'s instances pasted on it.

        Returns the target's instances first (masks minus the pasted pixels; a fully covered one has
        an all-zero mask, which the dataset drops with its label), then the pasted instances (those
        that land at least partly inside the target), and the target's crowd masks minus the pasted
        pixels. A source without instances returns ``target`` unchanged.
        """
        n = len(source.labels)
        if n == 0:
            return target
        count = int(rng.integers(1, min(n, self.max_instances) + 1))
        chosen = np.sort(rng.choice(n, size=count, replace=False))
        scale = float(rng.uniform(*self.scale_range))
        image, masks = _rescale(source.image, source.masks[chosen], scale)
        height, width = target.image.shape[:2]
        top = _offset(rng, image.shape[0], height)
        left = _offset(rng, image.shape[1], width)
        placed_image, placed_masks = _place(image, masks, top, left, height, width)
        visible = placed_masks.reshape(len(placed_masks), -1).any(axis=1)
        placed_masks, labels = placed_masks[visible], source.labels[chosen][visible]
        if len(labels) == 0:
            return target
        cover = placed_masks.any(axis=0)
        out_image = target.image.copy()
        out_image[cover] = placed_image[cover]
        keep = (~cover).astype(np.uint8)
        return Instances(
            image=out_image,
            masks=np.concatenate([target.masks * keep, placed_masks]),
            labels=np.concatenate([target.labels, labels]),
            crowd_masks=target.crowd_masks * keep,
        )


def _rescale(image: np.ndarray, masks: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Image (linear) and ``[N, H, W]`` masks (nearest) resized by ``scale``, at least 1 px a side."""
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2: (width, height)
    if size == (w, h):
        return image, masks
    resized = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    stack = [cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) for m in masks]
    return resized, np.stack(stack) if stack else np.zeros((0, size[1], size[0]), np.uint8)


def _offset(rng: np.random.Generator, source: int, target: int) -> int:
    """Top (left) of the source in target pixels: a smaller source lies wholly inside the target,
    a larger one covers it wholly (negative offset)."""
    low, high = min(0, target - source), max(0, target - source)
    return int(rng.integers(low, high + 1))


def _place(
    image: np.ndarray, masks: np.ndarray, top: int, left: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Source image and masks moved to ``(top, left)`` on a ``height`` x ``width`` canvas (zeros
    outside the source), cropped where they leave it."""
    canvas = np.zeros((height, width, 3), dtype=image.dtype)
    placed = np.zeros((len(masks), height, width), dtype=np.uint8)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + image.shape[0], height), min(left + image.shape[1], width)
    if y1 > y0 and x1 > x0:
        src = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
        canvas[y0:y1, x0:x1] = image[src]
        placed[:, y0:y1, x0:x1] = masks[:, src[0], src[1]]
    return canvas, placed
