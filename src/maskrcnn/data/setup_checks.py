"""Checks the data module runs in ``setup``, before any training step.

- the augmentation's resize sizes are positive integers of sane size (named by config key);
- train and val define the same categories (ids and names);
- the training split holds at least one usable instance (not all crowd, not all skipped, not an
  empty annotation list, not all on unreadable images);
- the training resize leaves some instance with a pixel (``augmentation.min_size=1`` would not).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from maskrcnn.data.coco import CocoInstanceDataset
from maskrcnn.data.errors import DatasetError
from maskrcnn.data.masks import decode_segmentation

# A resized training image beyond this (plus one mask per instance at that size) is a typo, not a plan.
MAX_TRAINING_SIZE = 16384
RESIZE_KEYS = ("min_size", "max_size", "multiscale_sizes", "lsj_size", "lsj_scale")


def validate_augmentation_sizes(kwargs: dict[str, Any], config_keys: set[str]) -> None:
    """Reject resize settings that would shrink every image (and instance) away or exhaust memory.

    Errors name the key as ``augmentation.<key>`` when it came from the augmentation config group
    (``config_keys``), else as the ``CocoDataModule`` argument.
    """
    def key(name: str) -> str:
        return f"augmentation.{name}" if name in config_keys else name

    def pixels(name: str, value: Any) -> None:
        if type(value) is not int or not 0 < value <= MAX_TRAINING_SIZE:
            raise ValueError(f"{key(name)}={value!r}: must be a whole number of pixels in 1..{MAX_TRAINING_SIZE}")

    pixels("min_size", kwargs["min_size"])
    pixels("max_size", kwargs["max_size"])
    if kwargs.get("lsj_size") is not None:
        pixels("lsj_size", kwargs["lsj_size"])
    sizes = kwargs.get("multiscale_sizes")
    if sizes is not None:
        if not isinstance(sizes, (list, tuple)) or not sizes:
            raise ValueError(f"{key('multiscale_sizes')}={sizes!r}: must be a non-empty list of sizes in pixels")
        for value in sizes:
            pixels("multiscale_sizes", value)
    scale = kwargs.get("lsj_scale")
    if scale is not None and not (
        isinstance(scale, (list, tuple)) and len(scale) == 2
        and all(type(v) in (int, float) and 0 < v < float("inf") for v in scale) and scale[0] <= scale[1]
    ):
        raise ValueError(f"{key('lsj_scale')}={scale!r}: must be [low, high] with 0 < low <= high")


def check_same_categories(train: CocoInstanceDataset, val: CocoInstanceDataset) -> None:
    """Train and val must define the same categories, ids and names: the model's class names come
    from one file and the AP table from the other, so a difference would go unnoticed."""
    names = {split: dict(zip(ds.label_to_category_id.values(), ds.class_names[1:]))
             for split, ds in (("train", train), ("val", val))}
    files = f"train ({train.annotation_file}) and val ({val.annotation_file}) annotation files"
    if names["train"].keys() != names["val"].keys():
        only_train = sorted(names["train"].keys() - names["val"].keys())
        only_val = sorted(names["val"].keys() - names["train"].keys())
        raise DatasetError(f"{files} have different category ids: only in train {only_train}, only in val {only_val}")
    differ = [f"id {i}: {names['train'][i]!r} vs {names['val'][i]!r}" for i in sorted(names["train"])
              if names["train"][i] != names["val"][i]]
    if differ:
        more = "; ..." if len(differ) > 10 else ""
        raise DatasetError(f"{files} give categories different names (train vs val: {'; '.join(differ[:10])}{more})")


def no_instance_reason(dataset: CocoInstanceDataset) -> str | None:
    """Why the kept images of ``dataset`` hold no usable non-crowd instance (None when they hold some)."""
    if dataset.num_instances():
        return None
    if dataset.num_annotations == 0:
        return f"the file has {len(dataset.images)} image(s) but no annotations"
    skipped = [s for s in dataset.skipped if s["annotation_id"] is not None]
    crowds = sum(map(len, dataset._crowds.values()))
    parts = []
    if crowds:
        parts.append(f"{crowds} are crowd regions (iscrowd=1), which are never training instances")
    if skipped:
        top = Counter(s["reason"] for s in skipped).most_common(1)[0][0]
        where = f"; all listed in {dataset.skipped_log}" if dataset.skipped_log else ""
        parts.append(f"{len(skipped)} were skipped as unusable (most often: {top}{where})")
    rest = dataset.num_annotations - crowds - len(skipped)
    if rest:  # usable instances whose images were excluded afterwards
        parts.append(f"{rest} are on images that were excluded as unreadable")
    return f"of its {dataset.num_annotations} annotation(s), " + "; ".join(parts)


def check_training_instances(dataset: CocoInstanceDataset) -> None:
    """Training on zero instances would run, log falling losses and learn nothing: stop instead."""
    reason = no_instance_reason(dataset)
    if reason is not None:
        raise DatasetError(f"train split ({dataset.annotation_file}): no training instance left: {reason}. "
                           "Mask R-CNN needs at least one non-crowd object with a usable polygon or RLE mask")


def training_scale(augmentation: str, kwargs: dict[str, Any], height: int, width: int) -> float:
    """Largest factor the training pipeline ``augmentation`` resizes a ``height`` x ``width`` image by
    (``maskrcnn.data.transforms.build_transforms``)."""
    if augmentation == "lsj":
        return kwargs.get("lsj_size", 1024) * max(kwargs.get("lsj_scale") or (0.1, 2.0)) / max(height, width)
    short = max(kwargs.get("multiscale_sizes") or [kwargs["min_size"]]) if augmentation == "multiscale" else kwargs["min_size"]
    return min(short / min(height, width), kwargs["max_size"] / max(height, width))


def any_instance_survives(dataset: CocoInstanceDataset, augmentation: str, kwargs: dict[str, Any],
                          num_images: int = 16) -> bool:
    """Whether some training instance keeps a pixel when rasterised at the largest training scale,
    as the pipeline rasterises it (json only, no image decoding).

    Tries the ``num_images`` images whose largest instance is biggest after scaling (extents from
    validation): if none of their instances keeps a pixel, smaller ones do not either.
    """
    scored = []
    for img in dataset.images:
        if dataset._instances.get(img["id"]):
            scale = training_scale(augmentation, kwargs, img["height"], img["width"])
            scored.append((scale * dataset._extents.get(img["id"], 0.0), scale, img))
    scored.sort(key=lambda item: -item[0])
    for _, scale, img in scored[:num_images]:
        h0, w0 = img["height"], img["width"]
        out_size = (max(1, round(h0 * scale)), max(1, round(w0 * scale)))
        for ann in dataset._instances[img["id"]]:
            if decode_segmentation(ann["segmentation"], h0, w0, out_size=out_size).any():
                return True
    return False


def check_resize_keeps_instances(dataset: CocoInstanceDataset, augmentation: str, kwargs: dict[str, Any]) -> None:
    """Reject resize settings under which no training instance keeps a pixel."""
    if augmentation == "none" or any_instance_survives(dataset, augmentation, kwargs):
        return
    keys = ", ".join(f"augmentation.{k}={kwargs[k]}" for k in RESIZE_KEYS if kwargs.get(k) is not None)
    raise DatasetError(
        f"train split ({dataset.annotation_file}): with augmentation '{augmentation}' ({keys}) even the largest "
        "instances have no pixel left after resizing, so training would see no instance; raise augmentation.min_size "
        "/ max_size"
    )
