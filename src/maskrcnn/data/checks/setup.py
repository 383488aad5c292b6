"""Checks the data module runs in ``setup``, before any training step.

- the augmentation's resize sizes are positive integers of sane size (named by config key);
- train and val define the same categories (ids and names), and so do the checkpoint and the
  evaluated split;
- the training split holds at least one usable instance (not all crowd, not all skipped, not an
  empty annotation list, not all on unreadable images);
- the training resize leaves some instance with a pixel (``augmentation.min_size=1`` would not);
- the masks of the most crowded image fit in memory (thousands of instances on one image at the
  training scale, or on a large validation photo, which is never resized in the data pipeline).
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from maskrcnn.data.readers.masks import decode_segmentation
from maskrcnn.data.transforms import AUGMENTATIONS, NO_RESIZE_AUGMENTATIONS, build_transforms
from maskrcnn.errors import ConfigError, DatasetError

if TYPE_CHECKING:  # the dataset calls these checks; only its type is needed here
    from maskrcnn.data.coco import CocoInstanceDataset

log = logging.getLogger(__name__)

# A resized training image beyond this (plus one mask per instance at that size) is a typo, not a plan.
MAX_TRAINING_SIZE = 16384
RESIZE_KEYS = ("min_size", "max_size", "multiscale_sizes", "lsj_size", "lsj_scale")
# Bytes per mask pixel while one image is processed: the uint8 mask of the data pipeline plus the
# float32 copy the model makes of all of an image's masks (the mask targets in
# ``modeling/roi_heads.py``). For training a lower bound (batches and workers multiply it); for
# validation images larger than the model's input an upper bound (the copy is at the input size).
MASK_BYTES_PER_PIXEL = 1 + 4
MASK_MEMORY_WARN = 2 << 30  # one image's masks above this get a warning


def validate_augmentation_sizes(kwargs: dict[str, Any], config_keys: set[str]) -> None:
    """Reject resize settings that would shrink every image (and instance) away or exhaust memory.

    Errors name the key as ``augmentation.<key>`` when it came from the augmentation config group
    (``config_keys``), else as the ``CocoDataModule`` argument.
    """

    def key(name: str) -> str:
        return f"augmentation.{name}" if name in config_keys else name

    def pixels(name: str, value: Any) -> None:
        if type(value) is not int or not 0 < value <= MAX_TRAINING_SIZE:
            raise ConfigError(f"{key(name)}={value!r}: must be a whole number of pixels in 1..{MAX_TRAINING_SIZE}")

    pixels("min_size", kwargs["min_size"])
    pixels("max_size", kwargs["max_size"])
    if kwargs.get("lsj_size") is not None:
        pixels("lsj_size", kwargs["lsj_size"])
    sizes = kwargs.get("multiscale_sizes")
    if sizes is not None:
        if not isinstance(sizes, (list, tuple)) or not sizes:
            raise ConfigError(f"{key('multiscale_sizes')}={sizes!r}: must be a non-empty list of sizes in pixels")
        for value in sizes:
            pixels("multiscale_sizes", value)
    scale = kwargs.get("lsj_scale")
    if scale is not None and not (
        isinstance(scale, (list, tuple))
        and len(scale) == 2
        and all(type(v) in (int, float) and 0 < v < float("inf") for v in scale)
        and scale[0] <= scale[1]
    ):
        raise ConfigError(f"{key('lsj_scale')}={scale!r}: must be [low, high] with 0 < low <= high")


def augmentation_options(augmentation: str | dict, min_size: int, max_size: int) -> tuple[str, dict[str, Any]]:
    """(name, ``build_transforms`` kwargs) of the ``augmentation`` config group (or a bare name),
    sizes checked and the pipeline built once, so a bad name or option is one ConfigError now."""
    kwargs: dict[str, Any] = {"min_size": min_size, "max_size": max_size}
    config_keys: set[str] = set()  # keys that came from the augmentation config group
    name = augmentation
    if isinstance(augmentation, dict):
        options = dict(augmentation)
        name = options.pop("name", None)
        if name is None:
            raise ConfigError(f"augmentation.name must be set (one of {AUGMENTATIONS})")
        kwargs.update(options)
        config_keys = set(options)
    validate_augmentation_sizes(kwargs, config_keys)
    try:
        build_transforms(str(name), train=True, **kwargs)
    except (TypeError, ValueError) as exc:  # unknown name, unknown or mistyped key
        raise ConfigError(f"augmentation={name!r} with {kwargs}: {exc}") from exc
    return str(name), kwargs


def check_class_counts(
    train: CocoInstanceDataset | None,
    val: CocoInstanceDataset | None,
    expected_num_classes: int | None,
    expected_categories: tuple[str, dict[int, str]] | None,
) -> None:
    """Reject a model/dataset class-count mismatch (``data.num_classes``), splits whose categories
    differ, and splits whose categories differ from ``expected_categories`` ((where they come from,
    category id -> name), e.g. a checkpoint's), before any training step."""
    for split, dataset in (("train", train), ("val", val)):
        if dataset is None:
            continue
        if expected_num_classes is not None and dataset.num_categories != expected_num_classes:
            raise ConfigError(
                f"data.num_classes={expected_num_classes} (model.num_classes) but {split} annotations "
                f"{dataset.annotation_file} have {dataset.num_categories} categories: {dataset.class_names[1:]}"
            )
    if train is not None and val is not None:
        check_same_categories(train, val)
    if expected_categories is not None:
        source, expected = expected_categories
        for split, dataset in (("train", train), ("val", val)):
            if dataset is not None:
                check_categories_agree(
                    expected,
                    category_names(dataset),
                    f"{source} and the {split} annotations ({dataset.annotation_file})",
                    f"{source.split(' ')[0]} vs {split}",
                )


def category_names(dataset: CocoInstanceDataset) -> dict[int, str]:
    """Category id -> name of ``dataset``."""
    return dict(zip(dataset.label_to_category_id.values(), dataset.class_names[1:], strict=True))


def check_categories_agree(first: dict[int, str], second: dict[int, str], what: str, names: str) -> None:
    """Raise unless ``first`` and ``second`` (category id -> name) are equal.

    ``what`` names the two sources ("train (a.json) and val (b.json) annotation files"), ``names``
    the order of the names in the message ("train vs val").
    """
    if first.keys() != second.keys():
        only_first, only_second = sorted(first.keys() - second.keys()), sorted(second.keys() - first.keys())
        a, b = names.split(" vs ")
        raise DatasetError(f"{what} have different category ids: only in {a} {only_first}, only in {b} {only_second}")
    differ = [f"id {i}: {first[i]!r} vs {second[i]!r}" for i in sorted(first) if first[i] != second[i]]
    if differ:
        more = "; ..." if len(differ) > 10 else ""
        raise DatasetError(f"{what} give categories different names ({names}: {'; '.join(differ[:10])}{more})")


def check_same_categories(train: CocoInstanceDataset, val: CocoInstanceDataset) -> None:
    """Train and val must define the same categories, ids and names: the model's class names come
    from one file and the AP table from the other, so a difference would go unnoticed."""
    files = f"train ({train.annotation_file}) and val ({val.annotation_file}) annotation files"
    check_categories_agree(category_names(train), category_names(val), files, "train vs val")


def no_instance_reason(dataset: CocoInstanceDataset) -> str | None:
    """Why the kept images of ``dataset`` hold no usable non-crowd instance (None when they hold some)."""
    if dataset.num_instances():
        return None
    if dataset.num_annotations == 0:
        return f"the file has {dataset.num_file_images} image(s) but no annotations"
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
        raise DatasetError(
            f"train split ({dataset.annotation_file}): no training instance left: {reason}. "
            "Mask R-CNN needs at least one non-crowd object with a usable polygon or RLE mask"
        )


def warn_if_nothing_to_evaluate(dataset: CocoInstanceDataset) -> bool:
    """A validation split without a usable non-crowd instance gives COCO AP nothing to measure:
    every ``val/`` metric comes out NaN ("not computable"), never a misleading 0. Say so once, up
    front. Returns whether it warned."""
    reason = no_instance_reason(dataset)
    if reason is None:
        return False
    log.warning(
        "val split (%s): no instance to evaluate: %s. COCO AP is not computable, so every val/ metric "
        "will be NaN; add annotated validation images, or skip validation with trainer.limit_val_batches=0",
        dataset.annotation_file,
        reason,
    )
    return True


def training_scale(augmentation: str, kwargs: dict[str, Any], height: int, width: int) -> float:
    """Largest factor the training pipeline ``augmentation`` resizes a ``height`` x ``width`` image by
    (``maskrcnn.data.transforms.build_transforms``)."""
    if augmentation == "lsj":
        return kwargs.get("lsj_size", 1024) * max(kwargs.get("lsj_scale") or (0.1, 2.0)) / max(height, width)
    short = (
        max(kwargs.get("multiscale_sizes") or [kwargs["min_size"]])
        if augmentation == "multiscale"
        else kwargs["min_size"]
    )
    return min(short / min(height, width), kwargs["max_size"] / max(height, width))


def any_instance_survives(
    dataset: CocoInstanceDataset, augmentation: str, kwargs: dict[str, Any], num_images: int = 16
) -> bool:
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
    if augmentation in NO_RESIZE_AUGMENTATIONS or any_instance_survives(dataset, augmentation, kwargs):
        return
    keys = ", ".join(f"augmentation.{k}={kwargs[k]}" for k in RESIZE_KEYS if kwargs.get(k) is not None)
    raise DatasetError(
        f"train split ({dataset.annotation_file}): with augmentation '{augmentation}' ({keys}) even the largest "
        "instances have no pixel left after resizing, so training would see no instance; raise augmentation.min_size "
        "/ max_size"
    )


def physical_memory() -> int | None:
    """Bytes of RAM of this machine (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_mask_memory(
    dataset: CocoInstanceDataset,
    split: str,
    scale: Callable[[int, int], float],
    limit: int | None = None,
    warn: int = MASK_MEMORY_WARN,
) -> None:
    """Reject a split whose most crowded image needs more memory for its masks than ``limit``
    (default: this machine's RAM), and warn above ``warn`` bytes.

    The masks of an image are allocated together (``N x H x W``) at the size the pipeline gives the
    image, ``scale(height, width)`` times its json size: a few thousand instances on one image
    would pass every other check and then kill the process (the OOM killer leaves no message).
    """
    limit = physical_memory() if limit is None else limit
    worst, worst_img = 0, None
    for img in dataset.images:
        n = len(dataset._instances.get(img["id"], ())) + len(dataset._crowds.get(img["id"], ()))
        if not n:
            continue
        k = scale(img["height"], img["width"])
        need = n * max(1, round(img["height"] * k)) * max(1, round(img["width"] * k)) * MASK_BYTES_PER_PIXEL
        if need > worst:
            worst, worst_img = need, img
    if worst_img is None or worst <= warn:
        return
    img, k = worst_img, scale(worst_img["height"], worst_img["width"])
    n = len(dataset._instances.get(img["id"], ())) + len(dataset._crowds.get(img["id"], ()))
    size = f"{max(1, round(img['width'] * k))}x{max(1, round(img['height'] * k))}"
    message = (
        f"{split} split ({dataset.annotation_file}): image id {img['id']} ({img['file_name']!r}) has {n} "
        f"instance and crowd masks; at {size} px, the size the {split} pipeline gives it, they need about "
        f"{worst / 2**30:.1f} GiB (uint8 masks plus the model's float32 copy)"
    )
    fix = (
        "lower augmentation.min_size / max_size" if split == "train" else "resize the validation images on disk"
    ) + ", or split the image into tiles"
    if limit is not None and worst > limit:
        raise DatasetError(f"{message}, more than this machine's {limit / 2**30:.1f} GiB of memory; {fix}")
    log.warning("%s; memory may run out (%s)", message, fix)


def pipeline_scale(augmentation: str, kwargs: dict[str, Any]) -> Callable[[int, int], float]:
    """``(height, width) -> factor`` the training pipeline resizes an image by at most."""
    if augmentation == "tiles":  # native resolution, masks built at the tile's size: that area
        size = int(kwargs.get("tile_size", 800))
        return lambda height, width: math.sqrt(min(size, height) * min(size, width) / (height * width))
    if augmentation in NO_RESIZE_AUGMENTATIONS:  # no resize in the data pipeline
        return lambda height, width: 1.0
    return lambda height, width: training_scale(augmentation, kwargs, height, width)
