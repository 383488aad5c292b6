"""COCO-format instance-segmentation dataset producing ``maskrcnn.modeling.structures.Target`` dicts."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from maskrcnn.data.checks.annotation_file import validate_coco
from maskrcnn.data.checks.images import BAD_IMAGE_POLICIES, SkippedImageLog, probe_image, size_message
from maskrcnn.data.checks.skipped_annotations import report_skipped, warn_shared_files
from maskrcnn.data.copy_paste import CopyPaste, Instances
from maskrcnn.data.readers.image_io import image_to_tensor, load_rgb, reduced_decode_size
from maskrcnn.data.readers.masks import SegmentationRaster, masks_to_boxes
from maskrcnn.data.sampler import sample_seed
from maskrcnn.errors import DatasetError

logger = logging.getLogger(__name__)

# (image uint8 [H,W,3], masks uint8 [N,H,W]) -> (image, masks); see maskrcnn.data.transforms.
# masks: uint8 [N, H, W], or a (height, width) -> masks callable for a transform with ``accepts_mask_fn``
InstanceTransform = Callable[[np.ndarray, Any], tuple[np.ndarray, np.ndarray]]

_COPY_PASTE_STREAM = 0xC0FFEE  # copy-paste's generator: (item seed, this), apart from the transforms' draws


class CocoInstanceDataset(Dataset):
    """COCO instance segmentation: polygons, uncompressed / compressed RLE, iscrowd, empty images.

    Construction validates the json only (fast, no image decoding); see ``checks/annotation_file.py`` for the
    raise-vs-skip policy. Skipped annotations (and images excluded by ``keep_empty=False``) are
    listed in ``self.skipped``, written as JSON lines to ``skipped_log`` and summarised in a warning.

    Item ``i`` is ``(image, target)``:
        image: ``Tensor[3, H, W] float32`` in [0, 1], RGB, after ``transforms``.
        target: ``boxes Tensor[N, 4] float32 xyxy`` (recomputed from the transformed masks),
        ``labels Tensor[N] int64`` in 1..K, ``masks Tensor[N, H, W] uint8``, ``image_id int``,
        ``crowd_boxes Tensor[M, 4] float32 xyxy``, ``orig_size (H0, W0)`` of the decoded file.
    Instances (and crowd regions) whose mask is empty after the transform are dropped from
    boxes / labels / masks together. With ``bad_images="skip"`` item ``i`` is ``None`` when its file
    cannot be decoded (``collate`` drops it); the file is listed in ``skipped_images_log``.

    Args:
        image_dir: folder that ``file_name`` entries are relative to.
        annotation_file: COCO json path.
        transforms: callable ``(image uint8 [H,W,3], masks uint8 [N,H,W]) -> (image, masks)``. One
            with ``accepts_mask_fn = True`` (``InstanceAugment``) gets a ``SegmentationRaster``
            instead and asks for the masks at its resized size (or, ``augmentation=tiles``, in its
            crop window only), so polygons are rasterised once, at the training scale (see
            ``maskrcnn.data.transforms``).
        keep_empty: keep images without any valid instance (useful negatives).
        skipped_log: optional ``.jsonl`` path receiving one line per skipped annotation / image.
        bad_images: what ``__getitem__`` does with an unreadable image file: ``"raise"`` a
            DatasetError naming file and image id, or ``"skip"`` (return None and list it).
        skipped_images_log: optional ``.jsonl`` path listing unreadable images (see
            ``maskrcnn.data.checks.images.SkippedImageLog``); also written by ``exclude_images``.
        for_evaluation: the json is also COCO evaluation's ground truth: require ``bbox`` and
            ``area`` in every annotation (see ``validation.validate_coco``).
        decode_min_size: ``(short, long)``: the ``transforms`` never output a short side above
            ``short`` nor a long side above ``long`` (a resize comes first). JPEGs over twice as large
            are then decoded at reduced scale (see ``image_io.load_rgb``) and their polygon masks
            never built at full size, so a 10000x10000 photo never exists at full size in memory.
        seed: data seed of the per-item augmentation seeds (see ``__getitem__``).
        copy_paste: paste instances of another training image onto items (``data.copy_paste``);
            None or ``prob=0``: off.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        annotation_file: str | os.PathLike,
        transforms: InstanceTransform | None = None,
        keep_empty: bool = True,
        skipped_log: str | os.PathLike | None = None,
        bad_images: str = "raise",
        skipped_images_log: str | os.PathLike | None = None,
        for_evaluation: bool = False,
        decode_min_size: tuple[int, int] | None = None,
        seed: int = 0,
        copy_paste: CopyPaste | None = None,
    ) -> None:
        if bad_images not in BAD_IMAGE_POLICIES:
            raise ValueError(f"bad_images={bad_images!r}: expected one of {BAD_IMAGE_POLICIES}")
        self.image_dir = Path(image_dir)
        self.annotation_file = str(annotation_file)
        self.transforms = transforms
        self.bad_images = bad_images
        self.decode_min_size = decode_min_size
        self.seed = seed
        self.copy_paste = copy_paste
        self.image_log = SkippedImageLog(skipped_images_log, self.annotation_file)
        try:
            with open(annotation_file, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or bad UTF-8
            raise DatasetError(f"cannot read annotation file {self.annotation_file!r}: {exc}") from exc
        index = validate_coco(data, self.annotation_file, for_evaluation=for_evaluation)
        self._instances, self._crowds = index.instances, index.crowds
        self._categories = index.categories
        self._extents = index.extents
        self.num_annotations = index.num_annotations
        self.skipped_log = None if skipped_log is None else str(skipped_log)
        self._cat_to_label = {c["id"]: i + 1 for i, c in enumerate(self._categories)}
        self.skipped: list[dict] = index.skipped
        self.images: list[dict] = []
        self.num_file_images = len(index.images)  # in the json, before keep_empty and the image check
        for img in index.images:
            if keep_empty or self._instances.get(img["id"]):
                self.images.append(img)
            else:
                self.skipped.append(
                    {
                        "annotation_id": None,
                        "image_id": img["id"],
                        "file_name": img["file_name"],
                        "reason": "image has no valid instance annotations (keep_empty=False)",
                    }
                )
        report_skipped(self.skipped, self.annotation_file, self.num_annotations, skipped_log)
        warn_shared_files(index.shared_files, self.annotation_file)

    # ------------------------------------------------------------------ category mapping
    @property
    def num_categories(self) -> int:
        """K, the number of object categories (labels are 1..K; 0 is background)."""
        return len(self._categories)

    @property
    def class_names(self) -> list[str]:
        """Names indexed by label: ``class_names[0] == "__background__"``, length K + 1."""
        return ["__background__"] + [c["name"] for c in self._categories]

    @property
    def label_to_category_id(self) -> dict[int, int]:
        return {label: cat_id for cat_id, label in self._cat_to_label.items()}

    @property
    def category_id_to_label(self) -> dict[int, int]:
        return dict(self._cat_to_label)

    # ------------------------------------------------------------------ metadata (json only)
    def __len__(self) -> int:
        return len(self.images)

    def aspect_ratios(self) -> list[float]:
        """Width / height of every image, from the json (no decoding)."""
        return [img["width"] / img["height"] for img in self.images]

    def image_labels(self) -> list[set[int]]:
        """The labels (1..K) of every image's valid instances, from the json (repeat-factor sampling)."""
        return [
            {self._cat_to_label[a["category_id"]] for a in self._instances.get(img["id"], ())} for img in self.images
        ]

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.images[index]["file_name"]

    def num_instances(self) -> int:
        """Number of valid (non-crowd, non-skipped) instances over the kept images."""
        return sum(len(self._instances.get(img["id"], ())) for img in self.images)

    def check_images(self, full_decode: bool = False, num_threads: int | None = None) -> list[dict]:
        """Find unreadable images before training.

        Reads every image header (cheap) and compares its EXIF-corrected size with the json;
        ``full_decode=True`` also decodes the pixels to catch truncated files. Files are checked by
        ``num_threads`` threads (default: up to 8; the work is file I/O and GIL-free decoding).
        Returns one dict per bad image, in dataset order: image_id, file_name, reason
        (empty list when all good).
        """
        threads = num_threads or min(8, os.cpu_count() or 1)
        probe = lambda i: self._probe(i, full_decode)  # noqa: E731
        if threads <= 1 or len(self.images) < 2:
            reasons = [probe(i) for i in range(len(self.images))]
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                reasons = list(pool.map(probe, range(len(self.images)), chunksize=64))
        return [
            {"image_id": img["id"], "file_name": img["file_name"], "reason": reason}
            for img, reason in zip(self.images, reasons, strict=True)
            if reason is not None
        ]

    def _probe(self, index: int, full_decode: bool) -> str | None:
        return probe_image(self.image_path(index), self.images[index], self.annotation_file, full_decode)

    def exclude_images(self, bad: list[dict], write_log: bool = True) -> None:
        """Drop the images ``check_images`` found and list them (stage "check") in the skipped-images
        log; ``write_log=False`` (DDP ranks > 0) leaves the file to the first rank."""
        bad_ids = {b["image_id"] for b in bad}
        self.images = [img for img in self.images if img["id"] not in bad_ids]
        self.image_log.start(bad, write=write_log)

    # ------------------------------------------------------------------ loading
    def _load_image(self, index: int) -> np.ndarray | None:
        """``np.ndarray[H, W, 3] uint8`` (full size, or ``ceil(size / k)`` for a JPEG decoded at
        1/k scale), or None for an unreadable file under ``bad_images="skip"``."""
        img, path = self.images[index], self.image_path(index)
        try:
            at_least = reduced_decode_size(img["height"], img["width"], self.decode_min_size)
            image = load_rgb(path, img["id"], at_least=at_least)
            h, w = image.shape[:2]
            k = 1 if at_least is None else max(1, round(img["height"] / h))  # DCT scaling factor
            if (h, w) != (-(-img["height"] // k), -(-img["width"] // k)):
                reason = self._probe(index, full_decode=False)  # the file's full size, or why it has none
                raise DatasetError(reason or size_message(path, img, self.annotation_file, h * k, w * k))
        except DatasetError as exc:
            if self.bad_images == "raise":
                raise
            record = {"image_id": img["id"], "file_name": img["file_name"], "reason": str(exc)}
            if self.image_log.append(record):
                logger.warning(
                    "skipping unreadable image (%s)%s",
                    exc,
                    f"; listed in {self.image_log.path}" if self.image_log.path is not None else "",
                )
            return None
        return image

    def __getitem__(self, key: int | tuple[int, ...]) -> tuple[Tensor, dict] | None:
        """Item ``key``: an index, or ``(index, epoch[, copy])`` as ``GroupedBatchSampler(tag_epoch=True)`` yields.

        For a tuple, the transforms are reseeded with ``sample_seed(self.seed, epoch, index, copy)``
        first (when they have ``set_seed``), and copy-paste draws from a generator seeded by the same
        seed: the item's augmentation depends on nothing else, which makes a resumed run, and runs
        with different numbers of workers or DDP ranks, augment alike.
        """
        item_seed: int | None = None
        if isinstance(key, tuple):
            index, epoch, *copy = key
            item_seed = sample_seed(self.seed, epoch, index, *copy)
            self._reseed(item_seed)
        else:
            index = key
        item = self._transformed(index)
        if item is None:
            return None
        if self.copy_paste is not None and self.copy_paste.prob > 0 and len(self) > 1:
            if item_seed is None:  # an untagged item: a fresh draw of torch's RNG (seed_everything)
                item_seed = int(torch.randint(0, 2**31 - 1, ()).item())
            rng = np.random.default_rng([item_seed, _COPY_PASTE_STREAM])
            if rng.random() < self.copy_paste.prob:
                item = self.copy_paste.paste_another(item, index, len(self), self._source, rng)
        img = self.images[index]
        boxes, crowd_boxes = masks_to_boxes(item.masks), masks_to_boxes(item.crowd_masks)
        # masks_to_boxes gives empty masks all-zero boxes; a non-empty mask has x2 >= x1 + 1.
        keep = boxes[:, 2] > boxes[:, 0]
        crowd_keep = crowd_boxes[:, 2] > crowd_boxes[:, 0]
        labels, inst_masks = item.labels, item.masks
        if not keep.all():  # boolean indexing copies; skip it in the common case
            boxes, labels, inst_masks = boxes[keep], labels[keep], inst_masks[keep]
        target = {
            "boxes": torch.from_numpy(boxes),
            "labels": torch.from_numpy(labels),
            "masks": torch.from_numpy(np.ascontiguousarray(inst_masks)),
            "image_id": int(img["id"]),
            "crowd_boxes": torch.from_numpy(crowd_boxes[crowd_keep]),
            "orig_size": (int(img["height"]), int(img["width"])),
        }
        return image_to_tensor(item.image), target

    def _transformed(self, index: int) -> Instances | None:
        """Image ``index`` decoded and through ``transforms`` (None: unreadable, skipped)."""
        img = self.images[index]
        image = self._load_image(index)
        if image is None:
            return None
        instances = self._instances.get(img["id"], [])
        crowds = self._crowds.get(img["id"], [])
        rasterise = SegmentationRaster([ann["segmentation"] for ann in instances + crowds], img["height"], img["width"])
        labels = np.array([self._cat_to_label[a["category_id"]] for a in instances], dtype=np.int64)
        if self.transforms is None:
            masks = rasterise(*image.shape[:2])  # smaller than (h0, w0) for a reduced-scale JPEG
        elif getattr(self.transforms, "accepts_mask_fn", False):
            image, masks = self.transforms(image, rasterise)
        else:
            image, masks = self.transforms(image, rasterise(*image.shape[:2]))
        return Instances(image, masks[: len(instances)], labels, masks[len(instances) :])

    def _source(self, index: int, seed: int) -> Instances | None:
        """Image ``index`` transformed with the augmentation seed ``seed`` (a copy-paste source)."""
        self._reseed(seed)
        return self._transformed(index)

    def _reseed(self, seed: int) -> None:
        """Reseed the transforms' random ops, when they have any (``InstanceAugment.set_seed``)."""
        set_seed = getattr(self.transforms, "set_seed", None)
        if set_seed is not None:
            set_seed(seed)
