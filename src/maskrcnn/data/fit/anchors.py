"""Object boxes at the training scale against RPN anchors, and anchor / min_size suggestions.

Anchor fit is shape-only, as YOLOv5's autoanchor measures it: the IoU of an object box and an
anchor centred at the same point, best over every size and aspect ratio of every FPN level. It
ignores the anchor grid stride, so it is an upper bound of the RPN's matching IoU. The RPN keeps
each object's best anchor as a positive even below ``fg_iou_thresh`` (low-quality matches), so
"best IoU < 0.7" means a single weak positive, not none; below 0.5 the object is poorly recalled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from maskrcnn.data.fit.boxes import CocoBoxes

ANCHOR_KEEP_MARGIN = 0.01  # keep the configured anchors unless a doubling set gains this much fitness
SEARCH_SAMPLE = 20000  # objects the anchor search scores (a fixed-seed random subset)
MAX_MIN_SIZE = 1333  # never suggest a shortest edge above this
MAX_UPSCALE = 3.0  # ... nor a median image scale factor (vs. the file's pixels) above this
# P2's stride is 4 px: a smaller anchor than 2 strides is rarely centred on its object (the shape-only
# IoU ignores that offset), so a smaller base would look better here than it trains.
MIN_ANCHOR_BASE = 8
WARN_FRACTION = 0.01  # a fit problem matters from 1% of the training objects on


def training_scale(
    widths: np.ndarray, heights: np.ndarray, min_sizes: Sequence[int] | None, max_size: int
) -> np.ndarray:
    """Resize factor ``float64 [len(min_sizes), N]`` of N images: shortest edge -> each min size,
    unless the longest edge would exceed ``max_size`` (``transforms.ResizeShortestEdge``).
    ``min_sizes=None``: training at native resolution (``augmentation=tiles|none``), ``[1, N]`` ones."""
    if min_sizes is None:
        return np.ones((1, len(widths)), dtype=np.float64)
    short = np.minimum(widths, heights).astype(np.float64)
    long = np.maximum(widths, heights).astype(np.float64)
    return np.stack([np.minimum(m / short, max_size / long) for m in min_sizes]).reshape(len(min_sizes), len(short))


def object_boxes(data: CocoBoxes, min_sizes: Sequence[int] | None, max_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-crowd boxes at the training scale, ``(w, h) float64 [S * V]``: every object once per
    scale of ``min_sizes`` (a multi-scale list draws each size equally often; None: native size)."""
    keep = ~data.crowd
    scale = training_scale(data.widths, data.heights, min_sizes, max_size)[:, data.image_index[keep]]
    return (scale * data.wh[keep, 0]).ravel(), (scale * data.wh[keep, 1]).ravel()


def anchor_shapes(
    anchor_sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]]
) -> tuple[np.ndarray, np.ndarray]:
    """``(wh float64 [A, 2], level int64 [A])`` of torchvision ``AnchorGenerator``'s cell anchors,
    rounded as it rounds them (aspect ratio = h / w). One ratio list applies to every level."""
    if len(aspect_ratios) == 1:
        aspect_ratios = list(aspect_ratios) * len(anchor_sizes)
    if len(aspect_ratios) != len(anchor_sizes):
        raise ValueError(f"aspect_ratios has {len(aspect_ratios)} levels but anchor_sizes has {len(anchor_sizes)}")
    wh, level = [], []
    for lvl, (sizes, ratios) in enumerate(zip(anchor_sizes, aspect_ratios, strict=True)):
        for r in ratios:
            for s in sizes:
                h_ratio = math.sqrt(r)
                # torchvision rounds the corners -w/2, w/2 half-to-even, as numpy does.
                wh.append((2 * np.round(s / h_ratio / 2), 2 * np.round(s * h_ratio / 2)))
                level.append(lvl)
    return np.asarray(wh, dtype=np.float64).reshape(-1, 2), np.asarray(level, dtype=np.int64)


def best_anchor_iou(w: np.ndarray, h: np.ndarray, anchors_wh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shape-only IoU of N boxes ``w, h float64 [N]`` with their best anchor: ``(iou [N], anchor index [N])``."""
    best, arg = np.zeros(len(w)), np.zeros(len(w), dtype=np.int64)
    area = w * h
    for k, (aw, ah) in enumerate(anchors_wh):  # one pass per anchor (~15) keeps memory O(N)
        inter = np.minimum(w, aw) * np.minimum(h, ah)
        iou = inter / (area + aw * ah - inter)
        better = iou > best
        best[better], arg[better] = iou[better], k
    return best, arg


def fitness(best_iou: np.ndarray) -> float:
    """Mean best IoU, objects under 0.5 counting 0 (YOLOv5's anchor fitness, with IoU for its ratio)."""
    return float(np.mean(np.where(best_iou >= 0.5, best_iou, 0.0))) if len(best_iou) else 0.0


@dataclass
class Suggestion:
    """anchor_sizes: what to train with: the best doubling-per-level set at the configured scale,
    or the configured anchors when they miss < 1% of the objects (IoU < 0.5) or the best set gains
    less than ANCHOR_KEEP_MARGIN fitness (then ``keep_anchors``); ``best_doubling`` is shown anyway.
    min_size / max_size: the smallest larger scale (multiple of 32, capped) that lifts p5 of the
    object sizes to half the smallest configured anchor; None when not needed or capped (``note``)."""

    anchor_sizes: Sequence[Sequence[float]] | None = None
    keep_anchors: bool = True
    configured_fitness: float | None = None
    best_doubling: list[list[int]] | None = None
    best_doubling_fitness: float | None = None
    frac_iou_below_half: float | None = None  # of the training objects with ``anchor_sizes``
    min_size: int | list[int] | None = None
    max_size: int | None = None
    p5_at_min_size: float | None = None
    note: str = ""
    slicing: str = ""  # objects shrunk below the anchors by downscaling large images: tiles instead

    @property
    def fits(self) -> bool:
        """Whether the chosen anchors fit: best IoU >= 0.5 for all but ``WARN_FRACTION`` of the objects."""
        return self.frac_iou_below_half is not None and self.frac_iou_below_half < WARN_FRACTION

    def verdict(self, configured: str = "the configured anchors") -> str:
        """What the anchor choice is and whether it fits, with the numbers the report prints; never
        "fits" when they say otherwise."""
        fit = self.configured_fitness if self.keep_anchors else self.best_doubling_fitness
        numbers = f"IoU<0.5 {100 * (self.frac_iou_below_half or 0):.1f}%, fitness {fit or 0:.3f}"
        if self.keep_anchors and self.fits:
            return f"{configured} fit ({numbers})"
        if self.keep_anchors:
            best = f"{self.best_doubling} (fitness {self.best_doubling_fitness or 0:.3f})"
            return f"no anchor set fits: {configured} ({numbers}) and every doubling set, best {best}, miss the objects"
        if self.fits:
            return f"fitted to the training objects ({numbers})"
        return f"fitted to the training objects, but even these do not fit ({numbers})"


def _suggest_anchors(
    w: np.ndarray, h: np.ndarray, anchor_sizes: list[list[float]], aspect_ratios: list[list[float]], out: Suggestion
) -> None:
    pick: slice | np.ndarray = slice(None)
    if len(w) > SEARCH_SAMPLE:
        pick = np.random.default_rng(0).choice(len(w), SEARCH_SAMPLE, replace=False)
    sw, sh = w[pick], h[pick]
    configured_iou = best_anchor_iou(w, h, anchor_shapes(anchor_sizes, aspect_ratios)[0])[0]
    configured = fitness(best_anchor_iou(sw, sh, anchor_shapes(anchor_sizes, aspect_ratios)[0])[0])
    current_base = min(map(min, anchor_sizes))

    def doubling(base: int) -> list[list[int]]:
        return [[base * 2**i] for i in range(len(anchor_sizes))]

    bases = sorted({round(MIN_ANCHOR_BASE * 2 ** (k / 8)) for k in range(41)})  # 8..256 px in ~9% steps
    scored = [
        (
            fitness(best_anchor_iou(sw, sh, anchor_shapes(doubling(b), aspect_ratios)[0])[0]),
            -abs(math.log(b / current_base)),
            b,
        )
        for b in bases
    ]  # ties: the base nearest the configured one
    best_fit, _, base = max(scored)
    out.configured_fitness, out.best_doubling, out.best_doubling_fitness = configured, doubling(base), best_fit
    configured_misses = float(np.mean(configured_iou < 0.5))
    out.keep_anchors = configured_misses < WARN_FRACTION or best_fit - configured < ANCHOR_KEEP_MARGIN
    if out.keep_anchors:
        out.anchor_sizes, chosen_iou = anchor_sizes, configured_iou
    else:
        out.anchor_sizes = chosen = doubling(base)
        chosen_iou = best_anchor_iou(w, h, anchor_shapes(chosen, aspect_ratios)[0])[0]
    out.frac_iou_below_half = float(np.mean(chosen_iou < 0.5))


def _suggest_scale(
    w: np.ndarray,
    h: np.ndarray,
    train: CocoBoxes,
    min_sizes: list[int],
    max_size: int,
    smallest_anchor: float,
    out: Suggestion,
) -> None:
    target, p5 = smallest_anchor / 2, float(np.percentile(np.sqrt(w * h), 5))
    if p5 >= target:
        out.note = f"min_size: keep (p5 {p5:.1f} px >= {target:g} px, half the smallest anchor)"
        return
    median_scale = float(np.median(training_scale(train.widths, train.heights, min_sizes, max_size)))
    k = min(target / p5, MAX_MIN_SIZE / max(min_sizes), MAX_UPSCALE / median_scale)
    new_min = [min(MAX_MIN_SIZE, math.ceil(m * k / 32) * 32) for m in min_sizes]
    capped = f"capped at min_size {MAX_MIN_SIZE} / {MAX_UPSCALE:g}x median upscaling"
    if max(new_min) <= max(min_sizes):
        out.note = f"min_size: no larger scale suggested ({capped}; images are already scaled x{median_scale:.2f})"
        return
    # Raise the long-edge cap along (as 800/1333 go together), but no further than the images need.
    ratio = float(np.max(np.maximum(train.widths, train.heights) / np.minimum(train.widths, train.heights)))
    new_max = max(max_size, min(round(max_size * max(new_min) / max(min_sizes)), math.ceil(ratio * max(new_min))))
    nw, nh = object_boxes(train, new_min, new_max)
    out.min_size, out.max_size = (new_min if len(min_sizes) > 1 else new_min[0]), new_max
    out.p5_at_min_size = float(np.percentile(np.sqrt(nw * nh), 5))
    if out.p5_at_min_size < target:
        out.note = f"min_size: {capped}; p5 stays below {target:g} px"


def _suggest_slicing(
    w: np.ndarray, h: np.ndarray, train: CocoBoxes, min_sizes: list[int], max_size: int, smallest_anchor: float
) -> str:
    """Tile training + sliced inference when the resize shrinks the images (median factor < 1) and
    with them p5 of the objects below half the smallest anchor: at native resolution in tiles of
    the model's input size, objects keep their file size at the same cost per image."""
    p5 = float(np.percentile(np.sqrt(w * h), 5))
    median_scale = float(np.median(training_scale(train.widths, train.heights, min_sizes, max_size)))
    if p5 >= smallest_anchor / 2 or median_scale >= 1.0:
        return ""
    native = train.wh[~train.crowd]
    native_p5 = float(np.percentile(np.sqrt(native[:, 0] * native[:, 1]), 5))
    tile = max(min_sizes)
    return (
        f"images shrink x{median_scale:.2f} (p5 {p5:.1f} px, {native_p5:.1f} px at native resolution): train on "
        f"tiles and predict sliced, augmentation=tiles augmentation.tile_size={tile} inference.slice.tile_size={tile}"
    )


def suggest(
    w: np.ndarray,
    h: np.ndarray,
    train: CocoBoxes,
    min_sizes: list[int] | None,
    max_size: int,
    anchor_sizes: list[list[float]],
    aspect_ratios: list[list[float]],
) -> Suggestion:
    """Anchor sizes and training scale for the training objects ``w, h float64 [N]`` (px at the
    training scale, from ``object_boxes``); the two are alternatives, each scored on its own.
    At native resolution (``min_sizes=None``: tiles or no resize) only anchors can change."""
    out = Suggestion()
    if not len(w):
        out.note = "no training instances: nothing to suggest"
        return out
    _suggest_anchors(w, h, anchor_sizes, aspect_ratios, out)
    if min_sizes is None:
        p5 = float(np.percentile(np.sqrt(w * h), 5))
        out.note = f"scale: native resolution (tiles or no resize; p5 {p5:.1f} px): no resize to suggest"
        return out
    _suggest_scale(w, h, train, min_sizes, max_size, min(map(min, anchor_sizes)), out)
    out.slicing = _suggest_slicing(w, h, train, min_sizes, max_size, min(map(min, anchor_sizes)))
    return out
