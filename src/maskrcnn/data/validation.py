"""Fast validation of a COCO instance-segmentation json (no image decoding).

Policy:
- structural errors (missing keys, duplicate ids, unknown image / category, empty categories)
  raise ``DatasetError`` naming the annotation file and the offending id;
- per-annotation geometry problems (degenerate polygon, NaN / inf coordinates, negative-size or
  out-of-image box, zero area after clipping, malformed RLE) skip that annotation and are
  reported in ``CocoIndex.skipped`` so the caller can log them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from pycocotools import mask as mask_utils

from maskrcnn.data.errors import DatasetError


@dataclass
class CocoIndex:
    """Validated content of one annotation file.

    images: image dicts (id, file_name, width, height) in file order.
    categories: category dicts sorted by id.
    instances / crowds: image id -> valid annotations (iscrowd == 0 / iscrowd == 1).
    skipped: one dict per skipped annotation: annotation_id, image_id, file_name, reason.
    """

    images: list[dict]
    categories: list[dict]
    instances: dict[int, list[dict]] = field(default_factory=lambda: defaultdict(list))
    crowds: dict[int, list[dict]] = field(default_factory=lambda: defaultdict(list))
    skipped: list[dict] = field(default_factory=list)


def _finite(values: Any) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _clipped_area(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> float:
    w = min(x1, width) - max(x0, 0.0)
    h = min(y1, height) - max(y0, 0.0)
    return max(w, 0.0) * max(h, 0.0)


def _check_bbox(bbox: Any, width: int, height: int) -> str | None:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not _finite(bbox):
        return f"bbox {bbox!r} is not 4 finite numbers"
    x, y, w, h = bbox
    if w < 0 or h < 0:
        return f"bbox {bbox!r} has negative width or height"
    if _clipped_area(x, y, x + w, y + h, width, height) <= 0:
        return f"bbox {bbox!r} lies entirely outside the {width}x{height} image (zero area after clipping)"
    return None


def _polygon_area(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    return 0.5 * abs(sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n)))


def _check_polygons(polys: list, width: int, height: int) -> str | None:
    if len(polys) == 0:
        return "empty polygon list"
    for poly in polys:
        if not isinstance(poly, (list, tuple)) or len(poly) % 2 != 0:
            return "polygon must be a flat list [x1, y1, x2, y2, ...] of even length"
        if len(poly) < 6:
            return f"polygon with fewer than 3 points ({len(poly) // 2})"
        if not _finite(poly):
            return "polygon has NaN / inf / non-numeric coordinates"
        xs, ys = list(poly[0::2]), list(poly[1::2])
        if _clipped_area(min(xs), min(ys), max(xs), max(ys), width, height) <= 0:
            return "polygon lies entirely outside the image (zero area after clipping)"
        if _polygon_area(xs, ys) <= 0:
            return "degenerate polygon (zero area)"
    return None


def _check_rle(rle: dict, width: int, height: int) -> str | None:
    if list(rle.get("size", [])) != [height, width]:
        return f"RLE size {rle.get('size')!r} does not match image size [{height}, {width}]"
    counts = rle.get("counts")
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
            return "uncompressed RLE counts must be non-negative ints summing to height*width"
        if sum(counts[1::2]) == 0:
            return "empty mask (RLE has no foreground pixels)"
    elif isinstance(counts, (str, bytes)):
        try:
            area = int(mask_utils.area(rle))
        except Exception as exc:  # pycocotools raises on malformed strings
            return f"compressed RLE cannot be decoded: {exc}"
        if area == 0:
            return "empty mask (RLE has no foreground pixels)"
    else:
        return f"RLE counts of type {type(counts).__name__} (expected list or string)"
    return None


def check_annotation(ann: dict, image: dict) -> str | None:
    """Return why ``ann`` is geometrically unusable for ``image``, or None when it is fine."""
    width, height = image["width"], image["height"]
    if "bbox" in ann and (reason := _check_bbox(ann["bbox"], width, height)):
        return reason
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        return _check_polygons(seg, width, height)
    if isinstance(seg, dict):
        return _check_rle(seg, width, height)
    return "missing segmentation (Mask R-CNN needs polygon or RLE masks)"


def _require(d: dict, keys: tuple[str, ...], what: str, source: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise DatasetError(f"{source}: {what} is missing key(s) {missing}")


EVALUATION_KEYS = ("bbox", "area")  # read from the ground truth by COCO evaluation (pycocotools, faster-coco-eval)


def validate_coco(data: Any, source: str, for_evaluation: bool = False) -> CocoIndex:
    """Validate parsed COCO json ``data`` loaded from the file ``source`` (used in messages).

    ``for_evaluation=True`` (validation splits) also requires ``EVALUATION_KEYS`` in every
    annotation: the evaluator reads them from the file, so a missing one would otherwise crash at
    the end of the first validation epoch instead of before training.
    """
    if not isinstance(data, dict):
        raise DatasetError(f"{source}: top level must be a JSON object")
    _require(data, ("images", "annotations", "categories"), "the file", source)
    if not data["categories"]:
        raise DatasetError(f"{source}: 'categories' is empty; at least one category is required")

    categories: dict[int, dict] = {}
    for cat in data["categories"]:
        _require(cat, ("id", "name"), f"category {cat!r}", source)
        if cat["id"] in categories:
            raise DatasetError(f"{source}: duplicate category id {cat['id']}")
        categories[cat["id"]] = cat

    images: dict[int, dict] = {}
    for img in data["images"]:
        _require(img, ("id", "file_name", "width", "height"), f"image {img.get('id', img)!r}", source)
        if img["id"] in images:
            raise DatasetError(f"{source}: duplicate image id {img['id']} ({img['file_name']!r})")
        width, height = img["width"], img["height"]
        if not _finite((width, height)) or width != int(width) or height != int(height) or min(width, height) <= 0:
            raise DatasetError(f"{source}: image id {img['id']} has invalid size {width!r}x{height!r}")
        images[img["id"]] = {**img, "width": int(width), "height": int(height)}

    index = CocoIndex(images=list(images.values()), categories=sorted(categories.values(), key=lambda c: c["id"]))
    seen_ann_ids: set = set()
    for ann in data["annotations"]:
        _require(ann, ("id", "image_id", "category_id"), f"annotation {ann.get('id', '?')}", source)
        ann_id, image_id = ann["id"], ann["image_id"]
        if ann_id in seen_ann_ids:
            raise DatasetError(f"{source}: duplicate annotation id {ann_id} (image id {image_id})")
        seen_ann_ids.add(ann_id)
        if for_evaluation:
            _require(ann, EVALUATION_KEYS, f"annotation id {ann_id} (image id {image_id}, needed by COCO evaluation)", source)
        if image_id not in images:
            raise DatasetError(f"{source}: annotation id {ann_id} refers to unknown image id {image_id}")
        if ann["category_id"] not in categories:
            raise DatasetError(
                f"{source}: annotation id {ann_id} (image id {image_id}) refers to unknown category id {ann['category_id']}"
            )
        image = images[image_id]
        reason = check_annotation(ann, image)
        if reason is not None:
            index.skipped.append(
                {"annotation_id": ann_id, "image_id": image_id, "file_name": image["file_name"], "reason": reason}
            )
        elif ann.get("iscrowd", 0):
            index.crowds[image_id].append(ann)
        else:
            index.instances[image_id].append(ann)
    return index
