"""COCO json -> numpy arrays of image sizes and annotation boxes, for statistics (the fit report).

The boxes are the ones training uses: training takes each instance's box from its rasterised mask
(``coco.CocoInstanceDataset`` -> ``masks.masks_to_boxes``), never from the json ``bbox``. So a box
here is measured from the segmentation (``segmentation_boxes``) with pycocotools' ``toBbox``: the
box of the decoded RLE, or of the mask pycocotools rasterises from the polygons (clipped to the
image, as training's mask is). An annotation without a usable segmentation (missing, or failing
the checks ``checks/annotation_file.py`` runs) is skipped with that reason, as training skips it, whatever its
json ``bbox``. A json ``bbox`` that disagrees with its mask box is kept out of the statistics and
listed (``disagree``).

Independent of ``checks/annotation_file.py`` (it shares only the batched segmentation checks), vectorised; the
polygons are rasterised by pycocotools in batches (~10 us each), so 100k annotations cost ~2 s on
top of ``json.load`` (a COCO-size json, 860k, ~15 s). Structural problems that make
the file unreadable raise ``DatasetError`` naming the file and image id; a bad annotation is skipped
and counted per reason (never silently dropped).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maskrcnn.data.checks.rle import RleBatch
from maskrcnn.data.checks.segmentation import PolygonBatch, Problem, queue_segmentation
from maskrcnn.errors import DatasetError

REASONS = ("", "unknown image_id", "unknown category_id", "no usable segmentation", "mask covers no pixel of the image")
_NO_MASK = 3  # its text is the segmentation's own problem ("polygon lies entirely outside the image", ...)
# A json bbox disagrees with its mask box when a correctly predicted mask box would not match it at
# COCO's strict AP75 threshold (IoU < 0.75) AND some edge is more than 2 px off: polygon vertices
# and the pixel grid (and float vs. integer bbox conventions) account for up to 1 px per edge, which
# alone drops the IoU of objects a few px wide far below 0.75.
DISAGREE_IOU = 0.75
DISAGREE_PX = 2.0
_POLYGON_CHUNK = 20000  # polygons per pycocotools call (bounds the memory of their RLEs)


@dataclass
class CocoBoxes:
    """Images and VALID annotations of one json (V of them); sizes in the file's pixels."""

    path: str
    image_ids: np.ndarray  # int64 [I]
    widths: np.ndarray  # int64 [I]
    heights: np.ndarray  # int64 [I]
    categories: dict[int, str]  # category id -> name
    image_index: np.ndarray  # int64 [V] row in image_ids of each annotation's image
    category: np.ndarray  # int64 [V] category id
    crowd: np.ndarray  # bool [V] iscrowd
    wh: np.ndarray  # float64 [V, 2] box width, height (mask box, else json bbox) within the image
    invalid: dict[str, int]  # skipped annotations per reason
    invalid_examples: list[dict]  # first 5 skipped: annotation_id, image_id, reason
    disagree: int = 0  # valid annotations whose json bbox disagrees with the mask box
    disagree_examples: list[dict] = field(default_factory=list)  # first 5: annotation_id, image_id, bbox, mask_box


def _int_array(values: list) -> np.ndarray:
    """int64 [N]; entries that are not integers become -1 (then reported as unknown ids)."""
    try:
        return np.array(values, dtype=np.int64).reshape(len(values))
    except (TypeError, ValueError, OverflowError):
        return np.array([v if isinstance(v, int) and not isinstance(v, bool) else -1 for v in values], dtype=np.int64)


def _column(records: list[dict], key: str, default: object = None) -> list:
    try:  # subscripting is faster than .get on large files; a missing key falls back
        return [r[key] for r in records]
    except KeyError:
        return [r.get(key, default) for r in records]


def _bbox_array(raw: list) -> np.ndarray:
    """float64 [N, 4] xywh; a missing or malformed bbox becomes a row of NaN."""
    try:
        boxes = np.array(raw, dtype=np.float64)
        if boxes.shape == (len(raw), 4):
            return boxes
    except (TypeError, ValueError):
        pass
    boxes = np.full((len(raw), 4), np.nan)
    for i, b in enumerate(raw):
        if isinstance(b, (list, tuple)) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b):
            boxes[i] = b
    return boxes


def _polygon_boxes(anns: list[dict], slots: list[int], width: np.ndarray, height: np.ndarray, out: np.ndarray) -> None:
    """Write into ``out`` (xyxy [N, 4]) the box of the mask pycocotools rasterises (as training does,
    ``masks.rasterise_polygons``) from the polygons of each annotation in ``slots``: the union of
    its parts' ``toBbox``, all zero when no part covers a pixel. Polygons are rasterised in batches
    per image size (~10 us each; a COCO-size file has ~1M)."""
    from pycocotools import mask as mask_utils

    groups: dict[tuple[int, int], tuple[list, list]] = {}
    for i in slots:
        polys, owners = groups.setdefault((int(height[i]), int(width[i])), ([], []))
        polys.extend(anns[i]["segmentation"])
        owners.extend([i] * len(anns[i]["segmentation"]))
    parts, owner = [], []
    for (h, w), (polys, owners) in groups.items():
        for start in range(0, len(polys), _POLYGON_CHUNK):  # >= 6 coordinates each: never read as a bbox
            parts.append(mask_utils.toBbox(mask_utils.frPyObjects(polys[start : start + _POLYGON_CHUNK], h, w)))
        owner.extend(owners)
    if not owner:
        return
    xywh, owner_ids = np.concatenate(parts).reshape(-1, 4), np.asarray(owner)  # one annotation's parts are adjacent
    empty = (xywh[:, 2] <= 0) | (xywh[:, 3] <= 0)
    lo = np.where(empty[:, None], np.inf, xywh[:, :2])
    hi = np.where(empty[:, None], -np.inf, xywh[:, :2] + xywh[:, 2:])
    first = np.flatnonzero(np.concatenate([[True], owner_ids[1:] != owner_ids[:-1]]))
    box = np.concatenate([np.minimum.reduceat(lo, first), np.maximum.reduceat(hi, first)], axis=1)
    out[owner_ids[first]] = np.where(np.isfinite(box).all(axis=1, keepdims=True), box, 0.0)


def segmentation_boxes(
    anns: list[dict], width: np.ndarray, height: np.ndarray, known: np.ndarray
) -> tuple[np.ndarray, dict[int, str]]:
    """Mask boxes of N annotations on images of ``width, height int [N]`` (``known``: the image
    exists), as training rasterises them: ``(xyxy float64 [N, 4] clipped to the image, NaN where
    there is no usable segmentation; {annotation index: why not} for those of known images)``.

    "Usable" is what ``validation.validate_coco`` accepts (the same batched checks); an RLE is
    measured by pycocotools ``toBbox`` only after the checks, which keep malformed strings away
    from it (pycocotools can corrupt memory on them).
    """
    from pycocotools import mask as mask_utils

    boxes = np.full((len(anns), 4), np.nan)
    problems: dict[int, Problem] = {}
    polygons, rles = PolygonBatch(), RleBatch()
    for i in np.flatnonzero(known).tolist():
        problem = queue_segmentation(anns[i], i, int(width[i]), int(height[i]), polygons, rles)
        if problem is not None:
            problems[i] = problem
    for found in (polygons.run()[0], rles.run()):
        for i, problem in found.items():
            problems.setdefault(i, problem)
    _polygon_boxes(anns, [i for i in dict.fromkeys(polygons.owners) if i not in problems], width, height, boxes)
    measured = [i for i in rles.valid if i not in problems]
    if measured:
        objs = [
            seg if type(seg["counts"]) is str else mask_utils.frPyObjects(seg, int(height[i]), int(width[i]))
            for i, seg in ((i, anns[i]["segmentation"]) for i in measured)
        ]
        xywh = mask_utils.toBbox(objs).reshape(-1, 4)
        boxes[measured] = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    size = np.stack([width, height, width, height], axis=1).astype(np.float64)
    with np.errstate(invalid="ignore"):
        boxes = np.clip(boxes, 0, size)  # as the mask is clipped to the image; NaN stays NaN
    return boxes, {i: p.reason for i, p in problems.items()}


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of matching rows of two xyxy arrays [N, 4]."""
    inter = np.prod(np.clip(np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2]), 0, None), axis=1)
    union = np.prod(a[:, 2:] - a[:, :2], axis=1) + np.prod(b[:, 2:] - b[:, :2], axis=1) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read annotation file ({e.strerror or e})") from None
    except ValueError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise DatasetError(f"{path}: a COCO json needs the lists 'images', 'annotations' and 'categories'")
    return data


def _image_table(path: Path, images: list) -> np.ndarray:
    """int64 [I, 3] (id, width, height), checked: integer, positive sizes, unique ids."""
    try:
        table = np.array([(im["id"], im["width"], im["height"]) for im in images], dtype=np.int64).reshape(-1, 3)
    except (KeyError, TypeError, ValueError, OverflowError):
        bad = next(
            (
                im
                for im in images
                if not isinstance(im, dict) or not all(isinstance(im.get(k), int) for k in ("id", "width", "height"))
            ),
            None,
        )
        what = f"image {bad.get('id')!r}" if isinstance(bad, dict) else f"image entry {str(bad)[:80]}"
        raise DatasetError(
            f"{path}: {what} needs integer 'id', 'width' and 'height' (the fit report reads image sizes from the json)"
        ) from None
    ids, widths, heights = table.T
    if len(table) and (widths.min() <= 0 or heights.min() <= 0):
        i = int(np.flatnonzero((widths <= 0) | (heights <= 0))[0])
        raise DatasetError(f"{path}: image {int(ids[i])} has size {int(widths[i])}x{int(heights[i])}")
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) < len(ids):
        raise DatasetError(f"{path}: image id {int(unique[counts > 1][0])} appears more than once")
    return table


def _examples(anns: list[dict], rows: np.ndarray, **columns: list) -> list[dict]:
    return [
        {
            "annotation_id": anns[i].get("id"),
            "image_id": anns[i].get("image_id"),
            **{k: v[j] for k, v in columns.items()},
        }
        for j, i in enumerate(rows[:5].tolist())
    ]


def load_coco_boxes(path: str | Path) -> CocoBoxes:
    """Read a COCO json; see ``CocoBoxes``. Boxes are clipped to their image."""
    path = Path(path)
    data = _read_json(path)
    images, anns = data["images"], data["annotations"]
    table = _image_table(path, images)
    try:
        categories = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
        image_id, category = _int_array(_column(anns, "image_id")), _int_array(_column(anns, "category_id"))
        crowd_flags, bbox = _column(anns, "iscrowd", 0), _column(anns, "bbox")
    except (KeyError, TypeError, ValueError, AttributeError):
        raise DatasetError(
            f"{path}: every annotation and category must be an object; categories need an integer 'id'"
        ) from None
    try:
        crowd = np.array(crowd_flags, dtype=np.int64).reshape(len(anns)) != 0
    except (TypeError, ValueError, OverflowError):
        crowd = np.array([bool(v) for v in crowd_flags], dtype=bool)
    ids, widths, heights = table.T
    boxes = _bbox_array(bbox)

    order = np.argsort(ids)
    pos = np.minimum(np.searchsorted(ids[order], image_id), max(len(ids) - 1, 0))
    known_image = ids[order][pos] == image_id if len(ids) else np.zeros(len(anns), dtype=bool)
    index = order[pos] if len(ids) else np.zeros(len(anns), dtype=np.int64)
    width, height = (widths[index], heights[index]) if len(ids) else (np.ones(len(anns), dtype=np.int64),) * 2
    mask_box, no_mask = segmentation_boxes(anns, width, height, known_image)
    measured = np.isfinite(mask_box).all(axis=1)
    size = np.stack([width, height, width, height], axis=1)
    with np.errstate(invalid="ignore"):  # NaN json boxes never count: they are only compared below
        json_box = np.clip(np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1), 0, size)
        used_w, used_h = mask_box[:, 2] - mask_box[:, 0], mask_box[:, 3] - mask_box[:, 1]
        checks = (
            ~known_image,
            ~np.isin(category, np.array(list(categories), dtype=np.int64)),
            ~measured,
            measured & ((used_w <= 0) | (used_h <= 0)),
        )
    reason = np.zeros(len(anns), dtype=np.int64)
    for code, failed in enumerate(checks, start=1):  # the first failed check names the reason
        reason[(reason == 0) & failed] = code
    valid = reason == 0
    bad = np.flatnonzero(~valid)
    # no usable segmentation: training skips the annotation, for the reason validation gives
    why = [
        no_mask.get(i, "no usable segmentation") if reason[i] == _NO_MASK else REASONS[reason[i]] for i in bad.tolist()
    ]
    invalid = dict(Counter(why))
    examples = _examples(anns, bad, reason=why[:5])
    # A json bbox the mask contradicts: listed, never used (the mask box is, as in training).
    checked = valid & measured & np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
    with np.errstate(invalid="ignore"):
        off = np.abs(json_box - mask_box).max(axis=1)
        disagree = np.flatnonzero(checked & (_iou(json_box, mask_box) < DISAGREE_IOU) & (off > DISAGREE_PX))
    shown = disagree[:5]
    return CocoBoxes(
        str(path),
        ids,
        widths,
        heights,
        categories,
        index[valid],
        category[valid],
        crowd[valid],
        np.stack([used_w[valid], used_h[valid]], axis=1),
        invalid,
        examples,
        disagree=len(disagree),
        disagree_examples=_examples(
            anns, shown, bbox=[bbox[i] for i in shown.tolist()], mask_box=[_xywh(mask_box[i]) for i in shown.tolist()]
        ),
    )


def _xywh(box: np.ndarray) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [round(x0, 1), round(y0, 1), round(x1 - x0, 1), round(y1 - y0, 1)]
