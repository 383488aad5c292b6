"""Validation of a COCO instance-segmentation json at setup (no image decoding).

Goal: whatever passes this check loads. Every field the loader (and, for validation splits, COCO
evaluation) reads later is checked here with its JSON type.

Policy:
- structural errors raise ``DatasetError`` naming the annotation file, the key and the offending id
  or value: a top-level key missing or not a list, ``images`` or ``categories`` empty, an id that is
  not a JSON integer (``"3"``, ``3.0``, ``true``; never converted, since converted ids could merge
  distinct images), a duplicate or unknown id, ``iscrowd`` other than 0 / 1 / true / false, an empty
  or non-string ``file_name`` or category ``name``, a width / height that is not a positive integer
  or beyond what the image decoder accepts (``640.0`` is an error too: faster-coco-eval rejects it);
- per-annotation geometry problems skip that annotation and are listed in ``CocoIndex.skipped``
  (see ``segmentation_checks`` for the list). With ``for_evaluation=True`` the *malformed* ones
  (unreadable segmentation or box) are errors instead: COCO evaluation reads the file itself and
  would crash on them at the end of the first validation epoch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from maskrcnn.data.checks.rle import RleBatch
from maskrcnn.data.checks.segmentation import (
    BoxBatch,
    PolygonBatch,
    Problem,
    json_type,
    note_problem,
    queue_segmentation,
    short_repr,
)
from maskrcnn.data.readers import image_io  # noqa: F401  (sets PIL's pixel limit, read below)
from maskrcnn.errors import DatasetError

EVALUATION_KEYS = ("bbox", "area")  # read from the ground truth by COCO evaluation (pycocotools, faster-coco-eval)
_INT64 = 2**63  # ids go into int64 arrays in evaluation


@dataclass
class CocoIndex:
    """Validated content of one annotation file.

    images: image dicts (id, file_name, width, height as ints) in file order.
    categories: category dicts sorted by id.
    instances / crowds: image id -> valid annotations (iscrowd == 0 / iscrowd == 1).
    skipped: one dict per skipped annotation: annotation_id, image_id, file_name, reason.
    num_annotations: annotations in the file.
    extents: image id -> shorter bbox side (json pixels) of its largest valid instance (polygon or RLE).
    shared_files: file_name -> ids of the images (two or more) that name the same file.
    """

    images: list[dict]
    categories: list[dict]
    instances: dict[int, list[dict]] = field(default_factory=lambda: defaultdict(list))
    crowds: dict[int, list[dict]] = field(default_factory=lambda: defaultdict(list))
    skipped: list[dict] = field(default_factory=list)
    num_annotations: int = 0
    extents: dict[int, float] = field(default_factory=dict)
    shared_files: dict[str, list[int]] = field(default_factory=dict)


def _require(d: Any, keys: tuple[str, ...], what: str, source: str) -> None:
    if type(d) is not dict:
        raise DatasetError(f"{source}: {what} must be a JSON object, got {json_type(d)} {short_repr(d, 60)}")
    missing = [k for k in keys if k not in d]
    if missing:
        raise DatasetError(f"{source}: {what} is missing key(s) {missing}")


def _require_id(value: Any, what: str, where: str, source: str) -> None:
    """Ids must be JSON integers: "3" or 3.0 are never converted (a converted id could merge two images)."""
    if type(value) is not int:
        hint = ' (ids are not converted: "3" and 3 would be different ids)' if type(value) is str else ""
        raise DatasetError(
            f"{source}: {what} {short_repr(value, 60)}{where} must be a JSON integer, got {json_type(value)}{hint}"
        )
    if not -_INT64 <= value < _INT64:
        raise DatasetError(f"{source}: {what} {value}{where} is outside the 64-bit integer range")


def _top_level(data: Any, source: str) -> None:
    if type(data) is not dict:
        raise DatasetError(f"{source}: top level must be a JSON object, got {json_type(data)}")
    _require(data, ("images", "annotations", "categories"), "the file", source)
    for key in ("images", "annotations", "categories"):
        if type(data[key]) is not list:
            raise DatasetError(f"{source}: '{key}' must be a list, got {json_type(data[key])}")
    if not data["categories"]:
        raise DatasetError(f"{source}: 'categories' is empty; at least one category is required")
    if not data["images"]:
        raise DatasetError(f"{source}: 'images' is empty")


def _categories(raw: list, source: str) -> dict[int, dict]:
    categories: dict[int, dict] = {}
    for k, cat in enumerate(raw):
        _require(cat, ("id", "name"), f"categories[{k}]", source)
        _require_id(cat["id"], "category id", f" (categories[{k}], name {short_repr(cat['name'], 40)})", source)
        if cat["id"] < 0:  # evaluation maps labels to category ids with -1 meaning "none"
            raise DatasetError(f"{source}: category id {cat['id']} ({cat['name']!r}) is negative; ids must be >= 0")
        if type(cat["name"]) is not str or not cat["name"]:
            raise DatasetError(
                f"{source}: category id {cat['id']} has name {short_repr(cat['name'], 40)}; "
                "names must be non-empty strings"
            )
        if cat["id"] in categories:
            raise DatasetError(f"{source}: duplicate category id {cat['id']}")
        categories[cat["id"]] = cat
    return categories


def _size(img: dict, key: str, source: str) -> int:
    value = img[key]
    if type(value) is not int or value <= 0:
        raise DatasetError(
            f"{source}: image id {img['id']} ({img['file_name']!r}) has {key} {short_repr(value, 40)}; "
            "width and height must be positive JSON integers"
        )
    return value


def _max_pixels() -> float:
    """PIL refuses images above twice its MAX_IMAGE_PIXELS (raised by ``image_io``)."""
    return 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else float("inf")


def _images(raw: list, source: str) -> tuple[dict[int, dict], dict[str, list[int]]]:
    """Image id -> image, and the file names that several images share (with their ids)."""
    images: dict[int, dict] = {}
    first_id: dict[str, int] = {}
    shared: dict[str, list[int]] = {}
    for k, img in enumerate(raw):
        _require(img, ("id", "file_name", "width", "height"), f"images[{k}]", source)
        _require_id(img["id"], "image id", f" (images[{k}], file_name {short_repr(img['file_name'], 60)})", source)
        if type(img["file_name"]) is not str or not img["file_name"]:
            raise DatasetError(
                f"{source}: image id {img['id']} has file_name {short_repr(img['file_name'], 60)}; "
                "it must be a non-empty string (a path relative to the image folder)"
            )
        if img["id"] in images:
            raise DatasetError(f"{source}: duplicate image id {img['id']} ({img['file_name']!r})")
        width, height = _size(img, "width", source), _size(img, "height", source)
        if width * height > _max_pixels():
            raise DatasetError(
                f"{source}: image id {img['id']} ({img['file_name']!r}) is {width}x{height} "
                f"({width * height:.3g} pixels), more than the image loader decodes "
                f"({_max_pixels():.3g}); is width / height wrong?"
            )
        images[img["id"]] = img
        owner = first_id.setdefault(img["file_name"], img["id"])
        if owner != img["id"]:
            shared.setdefault(img["file_name"], [owner]).append(img["id"])
    return images, shared


def _iscrowd(ann: dict, source: str) -> int:
    crowd = ann.get("iscrowd", 0)
    if type(crowd) is bool:
        return int(crowd)
    if type(crowd) is not int or crowd not in (0, 1):
        raise DatasetError(
            f"{source}: annotation id {ann['id']} (image id {ann['image_id']}) has iscrowd "
            f"{short_repr(crowd, 40)} ({json_type(crowd)}); it must be 0 or 1"
        )
    return crowd


def _evaluation_fields(ann: dict, source: str) -> None:
    where = f"annotation id {ann['id']} (image id {ann['image_id']}"
    missing = [k for k in EVALUATION_KEYS if k not in ann]
    if missing:  # training takes boxes from the masks, but COCO evaluation reads these from the ground truth
        raise DatasetError(
            f"{source}: {where}): COCO evaluation (pycocotools, faster-coco-eval) reads 'bbox' and 'area' of "
            f"every ground-truth annotation of a validation split, and this one is missing key(s) {missing}. "
            "Training derives boxes from the masks, evaluation does not: fill them in from the masks "
            "(pycocotools.mask toBbox / area of each segmentation) to use this file for validation."
        )
    if type(ann["area"]) not in (int, float):
        raise DatasetError(f"{source}: {where}) has area {short_repr(ann['area'], 40)}; COCO evaluation needs a number")
    if ann["id"] <= 0:
        raise DatasetError(
            f"{source}: {where}): COCO evaluation (pycocotools, faster-coco-eval) stores matches by "
            "annotation id with 0 meaning 'unmatched', so ids must be >= 1"
        )


def _rejection(malformed: list[tuple[dict, Problem]], source: str, limit: int = 5) -> str:
    lines = [
        f"{source}: {len(malformed)} annotation(s) cannot be read as COCO ground truth; COCO evaluation "
        "reads this file itself, so they cannot just be skipped. Fix or remove them:"
    ]
    lines += [f"  annotation id {a['id']} (image id {a['image_id']}): {p.reason}" for a, p in malformed[:limit]]
    if len(malformed) > limit:
        lines.append(f"  ... and {len(malformed) - limit} more")
    return "\n".join(lines)


def validate_coco(data: Any, source: str, for_evaluation: bool = False) -> CocoIndex:
    """Validate parsed COCO json ``data`` loaded from the file ``source`` (used in messages).

    ``for_evaluation=True`` (validation splits) also requires ``EVALUATION_KEYS`` in every
    annotation and rejects annotations evaluation could not read (see the module docstring).
    """
    _top_level(data, source)
    categories = _categories(data["categories"], source)
    images, shared_files = _images(data["images"], source)
    index = CocoIndex(
        images=list(images.values()),
        categories=sorted(categories.values(), key=lambda c: c["id"]),
        num_annotations=len(data["annotations"]),
        shared_files=shared_files,
    )

    # One pass: ids, types and structure (errors raise at once); geometry is batched by slot
    # (the annotation's position in ``kept``).
    kept: list[tuple[dict, dict, int]] = []  # (annotation, image, iscrowd)
    problems: dict[int, Problem] = {}
    polygons, boxes, rles = PolygonBatch(), BoxBatch(), RleBatch()
    seen_ids: set = set()
    for k, ann in enumerate(data["annotations"]):
        if type(ann) is not dict or "id" not in ann or "image_id" not in ann or "category_id" not in ann:
            _require(ann, ("id", "image_id", "category_id"), f"annotations[{k}]", source)  # raises
        ann_id = ann["id"]
        _require_id(ann_id, "annotation id", f" (annotations[{k}])", source)
        if ann_id in seen_ids:
            raise DatasetError(
                f"{source}: duplicate annotation id {ann_id} (image id {short_repr(ann['image_id'], 40)})"
            )
        seen_ids.add(ann_id)
        _require_id(ann["image_id"], f"annotation id {ann_id}: image_id", "", source)
        image = images.get(ann["image_id"])
        if image is None:
            raise DatasetError(f"{source}: annotation id {ann_id} refers to unknown image id {ann['image_id']}")
        _require_id(ann["category_id"], f"annotation id {ann_id} (image id {ann['image_id']}): category_id", "", source)
        if ann["category_id"] not in categories:
            raise DatasetError(
                f"{source}: annotation id {ann_id} (image id {ann['image_id']}) refers to unknown "
                f"category id {ann['category_id']}"
            )
        crowd = _iscrowd(ann, source)
        if for_evaluation:
            _evaluation_fields(ann, source)
        slot, width, height = len(kept), image["width"], image["height"]
        kept.append((ann, image, crowd))
        if "bbox" in ann:
            boxes.add(slot, ann["bbox"], width, height)
        problem = queue_segmentation(ann, slot, width, height, polygons, rles)
        if problem is not None:
            problems[slot] = problem

    # Batched geometry: a malformed problem wins over an earlier geometric one of the same annotation.
    polygon_problems, extents = polygons.run()
    for found in (polygon_problems, rles.run()):
        for slot, problem in found.items():
            note_problem(problems, slot, problem)
    # The json bbox never decides: training takes the box from the mask (as the fit report does).
    # Only a validation split's bbox that COCO evaluation could not read rejects the file.
    for slot, problem in boxes.run().items():
        if for_evaluation and problem.malformed:
            note_problem(problems, slot, problem)

    malformed = []
    for slot, (ann, image, crowd) in enumerate(kept):
        problem = problems.get(slot)
        if problem is not None:
            if for_evaluation and problem.malformed:
                malformed.append((ann, problem))
            index.skipped.append(
                {
                    "annotation_id": ann["id"],
                    "image_id": ann["image_id"],
                    "file_name": image["file_name"],
                    "reason": problem.reason,
                }
            )
        elif crowd:
            index.crowds[ann["image_id"]].append(ann)
        else:
            index.instances[ann["image_id"]].append(ann)
    if malformed:
        raise DatasetError(_rejection(malformed, source))
    _record_extents(index, kept, extents, [s for s in rles.valid if s not in problems])
    return index


def _record_extents(index: CocoIndex, kept: list, extents: dict[int, float], rle_slots: list[int]) -> None:
    """Per image, the shorter box side of its largest valid non-crowd instance: polygons' vertex
    extents (``PolygonBatch``), RLEs' mask box (pycocotools ``toBbox``, checked strings only). Never
    the json ``bbox``: training takes boxes from the masks, and a json bbox may be absent or wrong."""
    from pycocotools import mask as mask_utils

    slots = [s for s in rle_slots if not kept[s][2]]
    if slots:
        rles = []
        for slot in slots:
            seg, image = kept[slot][0]["segmentation"], kept[slot][1]
            rles.append(
                seg if type(seg["counts"]) is str else mask_utils.frPyObjects(seg, image["height"], image["width"])
            )
        for slot, (w, h) in zip(slots, mask_utils.toBbox(rles).reshape(-1, 4)[:, 2:].tolist(), strict=True):
            extents[slot] = float(min(w, h))
    for slot, extent in extents.items():
        ann, _, crowd = kept[slot]
        if not crowd and extent > index.extents.get(ann["image_id"], -1.0):
            index.extents[ann["image_id"]] = extent
