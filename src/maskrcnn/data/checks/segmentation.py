"""Checks of annotation geometry (bbox, polygons; RLE in ``rle_checks``), batched for COCO-size files.

Every check returns, per annotation, why it is unusable as a ``Problem(reason, malformed)``:
- ``malformed=True``: the value cannot be read as a COCO segmentation / box at all (wrong nesting or
  types, NaN / inf or absurdly distant coordinates, an RLE that does not decode to its size). The
  loader skips such an annotation; COCO evaluation, which reads the file itself, would crash on it
  (or, for distant polygons, exhaust memory), so validation splits reject it (``checks/annotation_file.py``).
- ``malformed=False``: well-formed but useless geometry (outside the image, zero area, empty mask):
  skipped and listed everywhere. A json ``bbox`` is never used for training (the box comes from the
  mask), so its problems only matter where COCO evaluation reads it (``annotation_file.validate_coco``).

Polygons and boxes are collected while the file is walked once and then checked together with a
few numpy passes; only flagged annotations get per-item Python work.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

NUMBER_TYPES = (int, float, bool)  # JSON numbers (json.load gives bool for true/false)
# Polygons and boxes may reach this many image sizes beyond each edge. Rasterising a polygon costs
# time and memory in proportion to its outline (pycocotools walks every upsampled edge pixel), so a
# vertex at 1e8 would allocate gigabytes; real annotations stay within a few pixels of the image.
MARGIN = 1.0
# For the same reason a polygon's outline may be at most this many image perimeters long: a zig-zag
# of 1e5 vertices across a 1000 px image would need ~10 GB in pycocotools; real outlines are < 10.
MAX_OUTLINE_PERIMETERS = 100
# pycocotools merges the parts of a polygon annotation one after the other, in time that grows with
# the square of their number (docs/benchmarks.md), in the loader and in COCO evaluation alike. Real
# objects have a few parts; a mask in thousands of pieces belongs in an RLE.
MAX_POLYGON_PARTS = 1000


class Problem(NamedTuple):
    reason: str
    malformed: bool


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr`` cut to ``limit`` characters, for values quoted in messages (a polygon can be huge)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...]"


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    names = {
        type(None): "null",
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "a list",
        dict: "an object",
    }
    return names.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------------------- polygons
def polygon_structure_problem(segmentation: list) -> Problem | None:
    """Nesting and length of a polygon list (cheap: looks at lengths and first elements only).

    Non-numeric coordinates further inside a polygon are found by ``PolygonBatch``.
    """
    if not segmentation:
        return Problem("empty polygon list", True)
    if type(segmentation[0]) in NUMBER_TYPES:
        return Problem(
            "segmentation must be a list of polygons; wrap it in another list: [[x1, y1, x2, y2, ...]]", True
        )
    if len(segmentation) > MAX_POLYGON_PARTS:
        return Problem(
            f"{len(segmentation)} polygons in one annotation, more than {MAX_POLYGON_PARTS} (pycocotools "
            "merges them in quadratic time: store a mask in that many pieces as an RLE)",
            True,
        )
    for k, poly in enumerate(segmentation):
        if type(poly) is not list:
            return Problem(f"polygon {k} is {json_type(poly)}, expected a flat list [x1, y1, x2, y2, ...]", True)
        if poly and type(poly[0]) is list:
            return Problem(
                f"polygon {k} is a list of [x, y] point pairs; COCO polygons are flat lists "
                "[x1, y1, x2, y2, ...] (flatten each polygon)",
                True,
            )
        if len(poly) % 2:
            return Problem(f"polygon {k} has an odd number of coordinates ({len(poly)})", True)
        if len(poly) < 6:
            return Problem(f"polygon with fewer than 3 points ({len(poly) // 2})", True)
    return None


class PolygonBatch:
    """Polygons of many annotations (structure already checked), checked together by ``run``."""

    def __init__(self) -> None:
        self.flat: list = []  # all coordinates, x1, y1, x2, y2, ... polygon after polygon
        self.lengths: list[int] = []  # coordinates per polygon
        self.owners: list[int] = []  # annotation slot per polygon
        self.sizes: list[tuple[int, int]] = []  # (width, height) of the owner's image per polygon

    def add(self, slot: int, polygons: list[list], width: int, height: int) -> None:
        for poly in polygons:
            self.flat.extend(poly)
            self.lengths.append(len(poly))
            self.owners.append(slot)
            self.sizes.append((width, height))

    def run(self) -> tuple[dict[int, Problem], dict[int, float]]:
        """Returns ``(problems, extents)``: slot -> Problem for flagged annotations, and slot -> the
        shorter side of the bounding box of all its polygons (json pixels) for the others."""
        if not self.lengths:
            return {}, {}
        lengths = np.asarray(self.lengths)
        owners = np.asarray(self.owners)
        problems: dict[int, Problem] = {}
        coords = _numeric(self.flat)
        if coords is None:  # some polygon holds a string, null, list, ... : find which, drop them
            coords, keep = self._numeric_per_polygon(problems)
            lengths, owners = lengths[keep], owners[keep]
            sizes = np.asarray(self.sizes, dtype=np.float64)[keep]
        else:
            sizes = np.asarray(self.sizes, dtype=np.float64)
        if not len(lengths):
            return problems, {}
        starts = np.concatenate([[0], np.cumsum(lengths // 2)[:-1]])  # first vertex of each polygon
        xs, ys = coords[0::2], coords[1::2]
        finite = np.logical_and.reduceat(np.isfinite(xs) & np.isfinite(ys), starts)
        xs, ys = np.where(np.isfinite(xs), xs, 0.0), np.where(np.isfinite(ys), ys, 0.0)
        x0, x1 = np.minimum.reduceat(xs, starts), np.maximum.reduceat(xs, starts)
        y0, y1 = np.minimum.reduceat(ys, starts), np.maximum.reduceat(ys, starts)
        width, height = sizes[:, 0], sizes[:, 1]
        near = (
            (x0 >= -MARGIN * width)
            & (x1 <= (1 + MARGIN) * width)
            & (y0 >= -MARGIN * height)
            & (y1 <= (1 + MARGIN) * height)
        )
        inside = (np.minimum(x1, width) > np.maximum(x0, 0.0)) & (np.minimum(y1, height) > np.maximum(y0, 0.0))
        nxt = np.arange(1, len(xs) + 1)
        nxt[np.cumsum(lengths // 2) - 1] = starts  # the last vertex closes the polygon
        with np.errstate(invalid="ignore", over="ignore"):  # far-away polygons are rejected anyway
            area = 0.5 * np.abs(np.add.reduceat(xs * ys[nxt] - xs[nxt] * ys, starts))
            outline = np.add.reduceat(np.maximum(np.abs(xs[nxt] - xs), np.abs(ys[nxt] - ys)), starts)
        tangled = outline > MAX_OUTLINE_PERIMETERS * 2 * (width + height)
        # Malformed problems first: an annotation keeps its first problem unless a later one is malformed.
        for p in np.flatnonzero(~finite):
            note_problem(problems, int(owners[p]), Problem("polygon has NaN / inf coordinates", True))
        for p in np.flatnonzero(finite & ~near):
            reason = (
                f"polygon coordinates reach far outside the {int(width[p])}x{int(height[p])} image (x from "
                f"{x0[p]:.6g} to {x1[p]:.6g}, y from {y0[p]:.6g} to {y1[p]:.6g}; at most one image size "
                "beyond an edge is accepted)"
            )
            note_problem(problems, int(owners[p]), Problem(reason, True))
        for p in np.flatnonzero(finite & near & tangled):
            reason = (
                f"polygon outline is {outline[p]:.3g} px long ({lengths[p] // 2} points), more than "
                f"{MAX_OUTLINE_PERIMETERS} perimeters of the {int(width[p])}x{int(height[p])} image"
            )
            note_problem(problems, int(owners[p]), Problem(reason, True))
        # Zero area first: such a polygon has no inside, so "outside the image" would not be true of it. A
        # polygon with no width or height has none, whatever float rounding leaves of its shoelace sum.
        with np.errstate(invalid="ignore", over="ignore"):
            degenerate = ~(area > 1e-9 * (1.0 + outline**2)) | (x1 <= x0) | (y1 <= y0)
        for p in np.flatnonzero(degenerate):
            note_problem(problems, int(owners[p]), Problem("degenerate polygon (zero area)", False))
        for p in np.flatnonzero(~inside):
            note_problem(
                problems,
                int(owners[p]),
                Problem("polygon lies entirely outside the image (zero area after clipping)", False),
            )
        # Extent of each annotation (over all its polygons), for the augmentation check of the data module.
        order = np.flatnonzero(np.concatenate([[True], owners[1:] != owners[:-1]]))
        ext = np.minimum(
            np.maximum.reduceat(x1, order) - np.minimum.reduceat(x0, order),
            np.maximum.reduceat(y1, order) - np.minimum.reduceat(y0, order),
        )
        extents = {int(s): float(e) for s, e in zip(owners[order], ext, strict=True) if int(s) not in problems}
        return problems, extents

    def _numeric_per_polygon(self, problems: dict[int, Problem]) -> tuple[np.ndarray, np.ndarray]:
        """Slow path: convert polygon by polygon, flagging those with non-numbers."""
        parts, keep, offset = [], np.ones(len(self.lengths), bool), 0
        index_in_owner: dict[int, int] = {}
        for p, (n, slot) in enumerate(zip(self.lengths, self.owners, strict=True)):
            poly = self.flat[offset : offset + n]
            offset += n
            k = index_in_owner[slot] = index_in_owner.get(slot, -1) + 1
            values = _numeric(poly)
            if values is None:
                bad = [v for v in poly if type(v) not in NUMBER_TYPES][:1]
                what = (
                    f"non-numeric coordinates (e.g. {short_repr(bad[0], 40)})"
                    if bad
                    else "a coordinate too large for a 64-bit float"
                )
                note_problem(problems, slot, Problem(f"polygon {k} has {what}", True))
                keep[p] = False
            else:
                parts.append(values)
        return (np.concatenate(parts) if parts else np.zeros(0)), keep


def _numeric(values: list) -> np.ndarray | None:
    """``values`` as float64 when they are all JSON numbers, else None (strings are NOT parsed)."""
    try:
        array = np.array(values)
    except (ValueError, TypeError, OverflowError):  # ragged nesting, ints beyond float range
        return None
    if array.ndim != 1 or array.dtype.kind not in "biuf":
        return None
    with np.errstate(over="ignore"):
        return array.astype(np.float64, copy=False)


def note_problem(problems: dict[int, Problem], slot: int, problem: Problem) -> None:
    """Record ``problem`` for annotation ``slot``: the first one found is kept, unless a later one is
    malformed and it was not (a validation split must then reject the annotation)."""
    old = problems.get(slot)
    if old is None or (problem.malformed and not old.malformed):
        problems[slot] = problem


def queue_segmentation(
    ann: dict, slot: int, width: int, height: int, polygons: PolygonBatch, rles: Any
) -> Problem | None:
    """Queue ``ann``'s segmentation for the batched checks (a polygon list into ``polygons``, an RLE
    object into ``rles``, an ``rle_checks.RleBatch``), or say why it has none usable. One dispatch for
    the loader (``validation``) and the fit report (``coco_boxes``), so both give the same reason."""
    seg = ann.get("segmentation")
    if type(seg) is list:
        problem = polygon_structure_problem(seg)
        if problem is None:
            polygons.add(slot, seg, width, height)
        return problem
    if type(seg) is dict:
        return rles.add(slot, seg, width, height)
    if "segmentation" not in ann:
        return Problem("missing segmentation (Mask R-CNN needs polygon or RLE masks)", True)
    return Problem(f"segmentation is {json_type(seg)}; expected a list of polygons or an RLE object", True)


# ---------------------------------------------------------------------------------------- boxes
class BoxBatch:
    """``bbox`` fields of many annotations, checked together by ``run``."""

    def __init__(self) -> None:
        self.values: list = []
        self.slots: list[int] = []
        self.sizes: list[tuple[int, int]] = []
        self.problems: dict[int, Problem] = {}

    def add(self, slot: int, bbox: Any, width: int, height: int) -> None:
        if type(bbox) is not list or len(bbox) != 4:
            self.problems[slot] = Problem(
                f"bbox {short_repr(bbox)} must be a list of 4 numbers [x, y, width, height]", True
            )
            return
        self.values.extend(bbox)
        self.slots.append(slot)
        self.sizes.append((width, height))

    def run(self) -> dict[int, Problem]:
        if not self.slots:
            return self.problems
        index = np.arange(len(self.slots))  # position in self.slots of each checked box
        boxes = _numeric(self.values)
        if boxes is None:  # some box holds a non-number: find which
            parts = [_numeric(self.values[4 * i : 4 * i + 4]) for i in index]
            for i in np.flatnonzero([part is None for part in parts]):
                self.problems[self.slots[i]] = Problem(
                    f"bbox {short_repr(self._box(i))} must be a list of 4 numbers [x, y, width, height]", True
                )
            index = np.array([i for i, part in enumerate(parts) if part is not None], dtype=np.int64)
            boxes = np.concatenate([parts[i] for i in index]) if len(index) else np.zeros(0)
        boxes = boxes.reshape(-1, 4)
        sizes = np.asarray(self.sizes, dtype=np.float64).reshape(-1, 2)[index]
        x, y, w, h = boxes.T
        width, height = sizes[:, 0], sizes[:, 1]
        with np.errstate(invalid="ignore", over="ignore"):
            finite = np.all(np.isfinite(boxes), axis=1)
            negative = (w < 0) | (h < 0)
            far = (
                (x < -MARGIN * width)
                | (y < -MARGIN * height)
                | (x + w > (1 + MARGIN) * width)
                | (y + h > (1 + MARGIN) * height)
            )
            inside = (np.minimum(x + w, width) > np.maximum(x, 0)) & (np.minimum(y + h, height) > np.maximum(y, 0))
        for k in np.flatnonzero(~finite | negative | far | ~inside):
            bbox, size = short_repr(self._box(index[k])), f"{int(width[k])}x{int(height[k])}"
            if not finite[k]:  # malformed: COCO evaluation reads it from a validation split's file
                self.problems[self.slots[index[k]]] = Problem(f"bbox {bbox} is not 4 finite numbers", True)
                continue
            if negative[k]:
                reason = f"bbox {bbox} has negative width or height"
            elif far[k]:
                reason = f"bbox {bbox} reaches far outside the {size} image (more than one image size beyond an edge)"
            else:
                reason = f"bbox {bbox} lies entirely outside the {size} image (zero area after clipping)"
            self.problems[self.slots[index[k]]] = Problem(reason, False)
        return self.problems

    def _box(self, i: int | np.integer) -> list:
        return self.values[4 * i : 4 * i + 4]
