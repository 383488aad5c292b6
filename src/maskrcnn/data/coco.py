"""COCO-format instance-segmentation dataset producing the training target dict of docs/design.md."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor
from torch.utils.data import Dataset

from maskrcnn.data.errors import DatasetError
from maskrcnn.data.image_io import exif_size, load_rgb, open_image
from maskrcnn.data.validation import validate_coco

logger = logging.getLogger(__name__)

# (image uint8 [H,W,3], masks uint8 [N,H,W]) -> (image, masks); see maskrcnn.data.transforms.
InstanceTransform = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def decode_segmentation(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """Rasterise a COCO polygon list, uncompressed RLE or compressed RLE.

    Returns:
        mask: ``np.ndarray[height, width] uint8`` in {0, 1}.
    """
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


class CocoInstanceDataset(Dataset):
    """COCO instance segmentation: polygons, uncompressed / compressed RLE, iscrowd, empty images.

    Construction validates the json only (fast, no image decoding); see ``validation.py`` for the
    raise-vs-skip policy. Skipped annotations (and images excluded by ``keep_empty=False``) are
    listed in ``self.skipped``, written as JSON lines to ``skipped_log`` and summarised in a warning.

    Item ``i`` is ``(image, target)``:
        image: ``Tensor[3, H, W] float32`` in [0, 1], RGB, after ``transforms``.
        target: ``boxes Tensor[N, 4] float32 xyxy`` (recomputed from the transformed masks),
        ``labels Tensor[N] int64`` in 1..K, ``masks Tensor[N, H, W] uint8``, ``image_id int``,
        ``crowd_boxes Tensor[M, 4] float32 xyxy``, ``orig_size (H0, W0)`` of the decoded file.
    Instances (and crowd regions) whose mask is empty after the transform are dropped from
    boxes / labels / masks together.

    Args:
        image_dir: folder that ``file_name`` entries are relative to.
        annotation_file: COCO json path.
        transforms: callable ``(image uint8 [H,W,3], masks uint8 [N,H,W]) -> (image, masks)``.
        keep_empty: keep images without any valid instance (useful negatives).
        skipped_log: optional ``.jsonl`` path receiving one line per skipped item.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        annotation_file: str | os.PathLike,
        transforms: InstanceTransform | None = None,
        keep_empty: bool = True,
        skipped_log: str | os.PathLike | None = None,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.annotation_file = str(annotation_file)
        self.transforms = transforms
        try:
            with open(annotation_file, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetError(f"cannot read annotation file {self.annotation_file!r}: {exc}") from exc
        index = validate_coco(data, self.annotation_file)
        self._instances, self._crowds = index.instances, index.crowds
        self._categories = index.categories
        self._cat_to_label = {c["id"]: i + 1 for i, c in enumerate(self._categories)}
        self.skipped: list[dict] = index.skipped
        self.images: list[dict] = []
        for img in index.images:
            if keep_empty or self._instances.get(img["id"]):
                self.images.append(img)
            else:
                self.skipped.append(
                    {"annotation_id": None, "image_id": img["id"], "file_name": img["file_name"],
                     "reason": "image has no valid instance annotations (keep_empty=False)"}
                )
        self._report_skipped(skipped_log)

    def _report_skipped(self, skipped_log: str | os.PathLike | None) -> None:
        if skipped_log is not None:
            Path(skipped_log).parent.mkdir(parents=True, exist_ok=True)
            with open(skipped_log, "w", encoding="utf-8") as f:
                for item in self.skipped:
                    f.write(json.dumps({"annotation_file": self.annotation_file, **item}) + "\n")
        if self.skipped:
            counts = Counter(item["reason"] for item in self.skipped)
            summary = "; ".join(f"{n}x {reason}" for reason, n in counts.most_common())
            logger.warning(
                "%s: skipped %d item(s) (%s)%s", self.annotation_file, len(self.skipped), summary,
                f"; details in {skipped_log}" if skipped_log is not None else "",
            )

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

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.images[index]["file_name"]

    def num_instances(self) -> int:
        """Number of valid (non-crowd, non-skipped) instances over the kept images."""
        return sum(len(self._instances.get(img["id"], ())) for img in self.images)

    def check_images(self, full_decode: bool = False) -> list[dict]:
        """Find unreadable images before training.

        Reads every image header (cheap) and compares its EXIF-corrected size with the json;
        ``full_decode=True`` also decodes the pixels to catch truncated files.
        Returns one dict per bad image: image_id, file_name, reason (empty list when all good).
        """
        bad = []
        for i, img in enumerate(self.images):
            path = self.image_path(i)
            try:
                if full_decode:
                    h, w = load_rgb(path, img["id"]).shape[:2]
                else:
                    with open_image(path, img["id"]) as pil:
                        h, w = exif_size(pil)
                if (h, w) != (img["height"], img["width"]):
                    raise DatasetError(self._size_message(path, img, h, w))
            except DatasetError as exc:
                bad.append({"image_id": img["id"], "file_name": img["file_name"], "reason": str(exc)})
        return bad

    def _size_message(self, path: Path, img: dict, h: int, w: int) -> str:
        return (
            f"image file {str(path)!r} (image id {img['id']}) is {w}x{h} after EXIF orientation but "
            f"{self.annotation_file!r} says {img['width']}x{img['height']}"
        )

    # ------------------------------------------------------------------ loading
    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        img = self.images[index]
        path = self.image_path(index)
        image = load_rgb(path, img["id"])
        h0, w0 = image.shape[:2]
        if (h0, w0) != (img["height"], img["width"]):
            raise DatasetError(self._size_message(path, img, h0, w0))
        instances = self._instances.get(img["id"], [])
        crowds = self._crowds.get(img["id"], [])
        masks = np.zeros((len(instances) + len(crowds), h0, w0), dtype=np.uint8)
        for k, ann in enumerate(instances + crowds):
            masks[k] = decode_segmentation(ann["segmentation"], h0, w0)
        labels = np.array([self._cat_to_label[a["category_id"]] for a in instances], dtype=np.int64)
        if self.transforms is not None:
            image, masks = self.transforms(image, masks)
        inst_masks, crowd_masks = masks[: len(instances)], masks[len(instances):]
        boxes, crowd_boxes = masks_to_boxes(inst_masks), masks_to_boxes(crowd_masks)
        keep = inst_masks.any(axis=(1, 2))
        crowd_keep = crowd_masks.any(axis=(1, 2))
        target = {
            "boxes": torch.from_numpy(boxes[keep]),
            "labels": torch.from_numpy(labels[keep]),
            "masks": torch.from_numpy(np.ascontiguousarray(inst_masks[keep])),
            "image_id": int(img["id"]),
            "crowd_boxes": torch.from_numpy(crowd_boxes[crowd_keep]),
            "orig_size": (int(h0), int(w0)),
        }
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        return tensor, target
