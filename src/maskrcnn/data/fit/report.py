"""Dataset-fit report: does a COCO dataset fit the training settings (scale, anchors, detections)?

``compute_fit_report`` reads the train (and val) json only - image width/height and each
annotation's box, no image decoding (``coco_boxes``) - and measures, per split: image / instance / crowd
counts per class, the most crowded image, and each object's size ``sqrt(w * h)`` AFTER the training
resize (shortest edge -> ``min_size``, longest edge capped at ``max_size``) against the RPN anchors
(``anchor_fit``: shape-only best anchor IoU, as YOLOv5's autoanchor). It warns, with the Hydra
override line to paste, about objects outside the anchor range, images with more instances than
``detections_per_img`` and rare classes, and suggests anchor sizes and ``min_size``.
Boxes are the ones training uses: measured from the masks (segmentation); an annotation without a
usable segmentation is skipped with that reason, as training skips it; a json ``bbox`` that
disagrees with its mask is warned about with example ids and not used.
``fit.report_text.format_report(report)`` is the printed text, ``FitReport.to_dict()`` the JSON (``dataset_fit.json``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maskrcnn.data.fit.anchors import (
    WARN_FRACTION,
    Suggestion,
    anchor_shapes,
    best_anchor_iou,
    object_boxes,
    suggest,
    training_scale,
)
from maskrcnn.data.fit.boxes import DISAGREE_IOU, DISAGREE_PX, CocoBoxes, load_coco_boxes

PERCENTILES = {"min": 0, "p1": 1, "p5": 5, "p50": 50, "p95": 95, "p99": 99, "max": 100}


@dataclass
class FitWarning:
    """message: what is wrong, with numbers; overrides: Hydra override lines that fix it, best
    first (empty when no config key does, e.g. a class with too few annotations)."""

    message: str
    overrides: list[str] = field(default_factory=list)

    @property
    def override(self) -> str | None:
        return self.overrides[0] if self.overrides else None


@dataclass
class SplitStats:
    """Counts, and object sizes in px at the training scale, of one annotation file."""

    annotation_file: str
    images: int
    images_without_instances: int
    instances: int  # valid non-crowd annotations
    crowd: int  # valid iscrowd=1 regions (ignored in training, not objects)
    invalid: dict[str, int]  # skipped annotations per reason
    invalid_examples: list[dict]  # first 5 skipped: annotation_id, image_id, reason
    instances_per_class: dict[str, int]
    max_instances: int
    max_instances_image_id: int | None
    images_over_detections: int  # images with more instances than detections_per_img
    image_scale: dict[str, float]  # training resize factor vs. the file's pixels: min, p50, max
    sizes: dict[str, float] | None  # PERCENTILES of sqrt(w*h); None without instances
    frac_below_half_smallest: float
    frac_above_twice_largest: float
    frac_iou_below_fg: float  # best anchor IoU < rpn fg_iou_thresh
    frac_iou_below_half: float  # best anchor IoU < 0.5: the object is poorly recalled by the RPN
    best_iou_median: float | None
    level_share: list[float]  # fraction of objects whose best anchor is on each FPN level
    bbox_disagree: int = 0  # json bbox disagrees with the mask box (not used; see coco_boxes)
    bbox_disagree_examples: list[dict] = field(default_factory=list)  # first 5: ids, json bbox, mask box


@dataclass
class FitReport:
    settings: dict[str, Any]
    classes: list[str]
    splits: dict[str, SplitStats]  # "train" and, when given, "val"
    warnings: list[FitWarning]
    suggestion: Suggestion

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable (``dataset_fit.json``, W&B run config)."""
        return asdict(self)


def _split_stats(
    p: CocoBoxes,
    names: dict[int, str],
    w: np.ndarray,
    h: np.ndarray,
    scale: np.ndarray,
    anchor_sizes: list[list[float]],
    anchors: tuple[np.ndarray, np.ndarray],
    fg_iou: float,
    detections_per_img: int,
) -> SplitStats:
    inst = ~p.crowd
    per_image = np.bincount(p.image_index[inst], minlength=len(p.image_ids))
    top = int(np.argmax(per_image)) if len(per_image) else None
    ids, counts = np.unique(p.category[inst], return_counts=True)
    count_of = dict(zip(ids.tolist(), counts.tolist(), strict=True))
    smallest, largest = min(map(min, anchor_sizes)), max(map(max, anchor_sizes))
    sizes = np.sqrt(w * h)
    best, arg = best_anchor_iou(w, h, anchors[0])
    n_levels, frac = len(anchor_sizes), (lambda m: float(np.mean(m)) if len(m) else 0.0)
    return SplitStats(
        annotation_file=p.path,
        images=len(p.image_ids),
        images_without_instances=int(np.sum(per_image == 0)),
        instances=int(inst.sum()),
        crowd=int(p.crowd.sum()),
        invalid=p.invalid,
        invalid_examples=p.invalid_examples,
        instances_per_class={name: count_of.get(cid, 0) for cid, name in names.items()},
        max_instances=int(per_image[top]) if top is not None else 0,
        max_instances_image_id=int(p.image_ids[top]) if top is not None and per_image[top] else None,
        images_over_detections=int(np.sum(per_image > detections_per_img)),
        image_scale=(
            {k: float(np.percentile(scale, q)) for k, q in (("min", 0), ("p50", 50), ("max", 100))}
            if scale.size
            else {}
        ),
        sizes={k: float(np.percentile(sizes, q)) for k, q in PERCENTILES.items()} if len(sizes) else None,
        frac_below_half_smallest=frac(sizes < smallest / 2),
        frac_above_twice_largest=frac(sizes > 2 * largest),
        frac_iou_below_fg=frac(best < fg_iou),
        frac_iou_below_half=frac(best < 0.5),
        best_iou_median=float(np.median(best)) if len(best) else None,
        level_share=(np.bincount(anchors[1][arg], minlength=n_levels) / max(len(arg), 1)).tolist(),
        bbox_disagree=p.disagree,
        bbox_disagree_examples=p.disagree_examples,
    )


def anchor_override(anchor_sizes: Sequence[Sequence[float]]) -> str:
    levels = ",".join("[" + ",".join(f"{s:g}" for s in lvl) + "]" for lvl in anchor_sizes)
    return f"model.rpn.anchor_sizes='[{levels}]'"  # quoted: zsh and bash would glob an unquoted [...]


def scale_override(min_size: int | list[int], max_size: int, configured_max: int) -> str:
    if isinstance(min_size, list):
        parts = [
            f"model.transform.min_size={max(min_size)}",
            f"augmentation.multiscale_sizes='[{','.join(map(str, min_size))}]'",
        ]
    else:  # the augmentation sizes follow model.transform unless set explicitly
        parts = [f"model.transform.min_size={min_size}"]
    if max_size != configured_max:
        parts += [f"model.transform.max_size={max_size}"]
    return " ".join(parts)


def _warnings(splits: dict[str, SplitStats], s: Suggestion, settings: dict[str, Any]) -> list[FitWarning]:
    out, train = [], splits["train"]
    anchor_sizes = settings["anchor_sizes"]
    smallest, largest = min(map(min, anchor_sizes)), max(map(max, anchor_sizes))
    anchors = [anchor_override(s.anchor_sizes)] if s.anchor_sizes and not s.keep_anchors else []
    scale = (
        [scale_override(s.min_size, s.max_size, settings["max_size"])]
        if s.min_size is not None and s.max_size is not None
        else []
    )
    if train.frac_below_half_smallest >= WARN_FRACTION and train.sizes is not None:  # sizes: None without instances
        out.append(
            FitWarning(
                f"{train.frac_below_half_smallest:.1%} of training objects are below {smallest / 2:g} px "
                f"(half the smallest anchor) at the training scale; p5 = {train.sizes['p5']:.1f} px",
                anchors + scale,
            )
        )
    if train.frac_above_twice_largest >= WARN_FRACTION and train.sizes is not None:
        out.append(
            FitWarning(
                f"{train.frac_above_twice_largest:.1%} of training objects are above {2 * largest:g} px "
                f"(twice the largest anchor) at the training scale; p99 = {train.sizes['p99']:.1f} px",
                anchors,
            )
        )
    limit = settings["detections_per_img"]
    for name, split in splits.items():
        if split.max_instances > limit:
            out.append(
                FitWarning(
                    f"{name}: image {split.max_instances_image_id} has {split.max_instances} instances > "
                    f"detections_per_img={limit} ({split.images_over_detections} image(s) over it): "
                    "the excess can never "
                    "be detected",
                    [f"model.roi_heads.detections_per_img={math.ceil(split.max_instances / 100) * 100}"],
                )
            )
    few = [(c, n) for c, n in train.instances_per_class.items() if n < settings["class_min_instances"]]
    if few:
        listed = ", ".join(f"{c} ({n})" for c, n in few[:10]) + (f", ... {len(few) - 10} more" if len(few) > 10 else "")
        out.append(
            FitWarning(
                f"{len(few)} class(es) with fewer than {settings['class_min_instances']} training instances: {listed}"
            )
        )
    for name, split in splits.items():
        out += box_warnings(name, split)
    for name, split in splits.items():
        if split.invalid:
            example = split.invalid_examples[0]
            out.append(
                FitWarning(
                    f"{name}: skipped {sum(split.invalid.values())} invalid annotation(s) ("
                    + "; ".join(f"{r}: {n}" for r, n in split.invalid.items())
                    + f"), e.g. annotation {example['annotation_id']} of image {example['image_id']}"
                )
            )
    return out


def box_warnings(name: str, split: SplitStats) -> list[FitWarning]:
    """Json bboxes that disagree with the mask boxes the report (and training) use."""
    out = []
    if split.bbox_disagree:
        shown = "; ".join(
            f"annotation {e['annotation_id']} (image {e['image_id']}): bbox {e['bbox']} vs mask box {e['mask_box']}"
            for e in split.bbox_disagree_examples[:3]
        )
        scored = "; COCO bbox AP of this split is scored against the json bbox" if name != "train" else ""
        out.append(
            FitWarning(
                f"{name}: {split.annotation_file}: {split.bbox_disagree} annotation(s) have a json bbox that "
                "disagrees with "
                f"their mask (IoU < {DISAGREE_IOU:g} and an edge > {DISAGREE_PX:g} px off), e.g. {shown}; training and "
                f"this report use the mask box{scored}"
            )
        )
    return out


def compute_fit_report(
    train_annotation_file: str | Path,
    val_annotation_file: str | Path | None = None,
    min_size: int | Sequence[int] | None = 800,
    max_size: int = 1333,
    anchor_sizes: Sequence[Sequence[float]] = ((32,), (64,), (128,), (256,), (512,)),
    aspect_ratios: Sequence[Sequence[float]] = ((0.5, 1.0, 2.0),),
    detections_per_img: int = 100,
    class_min_instances: int = 10,
    rpn_fg_iou_thresh: float = 0.7,
) -> FitReport:
    """Fit report of a COCO dataset for the given training settings (see the module docstring).

    min_size: shortest edge of the training resize, or the multi-scale list it draws from (each
    size weighs equally; the val split is measured at the same scales); None: objects at their
    file size (``max_size`` unused), as ``augmentation=tiles`` (with sliced evaluation at the
    tiles' size) and ``augmentation=none`` train them. aspect_ratios: one list
    per level, or one list for all. Raises ``DatasetError`` (naming the file and image id) for a
    json the report cannot read; invalid annotations are skipped, counted and warned about.
    """
    min_sizes: list[int] | None = None
    if min_size is not None:
        min_sizes = [int(min_size)] if isinstance(min_size, (int, np.integer)) else [int(m) for m in min_size]
    sizes = [[float(s) if float(s) != int(s) else int(s) for s in lvl] for lvl in anchor_sizes]
    ratios = [[float(r) for r in lvl] for lvl in aspect_ratios]
    anchors = anchor_shapes(sizes, ratios)
    parsed = {"train": load_coco_boxes(train_annotation_file)}
    if val_annotation_file is not None:
        parsed["val"] = load_coco_boxes(val_annotation_file)
    categories: dict[int, str] = {}
    for p in parsed.values():
        for cid, name in p.categories.items():
            categories.setdefault(cid, name)
    seen = list(categories.values())
    names = {cid: (n if seen.count(n) == 1 else f"{n} (id {cid})") for cid, n in sorted(categories.items())}
    settings = {
        "min_size": None if min_sizes is None else min_sizes if len(min_sizes) > 1 else min_sizes[0],
        "max_size": None if min_sizes is None else int(max_size),
        "anchor_sizes": sizes,
        "aspect_ratios": ratios,
        "detections_per_img": int(detections_per_img),
        "class_min_instances": int(class_min_instances),
        "rpn_fg_iou_thresh": float(rpn_fg_iou_thresh),
    }
    splits, boxes = {}, {}
    for name, p in parsed.items():
        boxes[name] = object_boxes(p, min_sizes, max_size)
        scale = training_scale(p.widths, p.heights, min_sizes, max_size)
        splits[name] = _split_stats(
            p, names, *boxes[name], scale, sizes, anchors, rpn_fg_iou_thresh, detections_per_img
        )
    suggestion = suggest(*boxes["train"], parsed["train"], min_sizes, max_size, sizes, ratios)
    return FitReport(settings, list(names.values()), splits, _warnings(splits, suggestion, settings), suggestion)
