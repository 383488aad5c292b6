"""Per-category numbers and precision-recall curves read from the COCOeval objects a
`CocoEvaluator.compute()` already accumulated (nothing is evaluated twice).

COCOeval's ``eval["precision"]`` is ``ndarray[T, R, K, A, M]``: IoU thresholds (0.50:0.05:0.95) x
recall thresholds (101 points 0..1) x categories (``params.catIds`` order) x area ranges
(``params.areaRngLbl``) x max-detections settings (``params.maxDets``); -1 marks "no ground truth".
Both backends (pycocotools, faster_coco_eval) fill it the same way.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class EvaluatedCoco(Protocol):
    """What these functions read of an evaluator after ``compute()`` (``CocoEvaluator`` has it):
    the evaluated ``image_ids``, the ground truth ``coco_gt`` (pycocotools API), ``coco_evals``
    (iou type -> accumulated COCOeval), ``max_dets`` and the evaluated ``iou_types``."""

    @property
    def image_ids(self) -> Any: ...
    @property
    def coco_gt(self) -> Any: ...
    @property
    def coco_evals(self) -> dict[str, Any]: ...
    @property
    def max_dets(self) -> int: ...
    @property
    def iou_types(self) -> Any: ...


def _precision(coco_eval: Any, max_dets: int) -> np.ndarray:
    """``ndarray[T, R, K] float64``: all areas, ``max_dets`` detections per image."""
    params = coco_eval.params
    a, m = list(params.areaRngLbl).index("all"), list(params.maxDets).index(max_dets)
    return np.asarray(coco_eval.eval["precision"], dtype=np.float64)[:, :, :, a, m]


def _iou_index(coco_eval: Any, iou_threshold: float) -> int:
    iou_thrs = np.asarray(coco_eval.params.iouThrs)
    matches = np.flatnonzero(np.isclose(iou_thrs, iou_threshold))
    if matches.size != 1:
        raise ValueError(f"iou_threshold={iou_threshold} is not a COCOeval IoU threshold {iou_thrs.round(2).tolist()}")
    return int(matches[0])


def _mean_or_none(values: np.ndarray) -> float | None:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


def per_category_results(evaluator: EvaluatedCoco) -> list[dict]:
    """One dict per category of the annotation file, sorted by category id: ``category_id``,
    ``name``, ``instances`` (non-crowd ground truth instances in the evaluated images) and
    ``<iou_type>_AP`` (IoU 0.50:0.95) and ``<iou_type>_AP50`` per evaluated iou type (all areas,
    ``max_dets``); ``None`` where COCOeval could not compute a value (no ground truth)."""
    evaluated = set(evaluator.image_ids)
    instances: dict[int, int] = {}
    for annotation in evaluator.coco_gt.dataset.get("annotations", []):
        if annotation["image_id"] in evaluated and not annotation.get("iscrowd", 0):
            category_id = int(annotation["category_id"])
            instances[category_id] = instances.get(category_id, 0) + 1
    precisions = {
        iou_type: (list(coco_eval.params.catIds), _precision(coco_eval, evaluator.max_dets), _iou_index(coco_eval, 0.5))
        for iou_type, coco_eval in evaluator.coco_evals.items()
    }
    rows = []
    gt = evaluator.coco_gt
    for category in sorted(gt.loadCats(gt.getCatIds()), key=lambda c: c["id"]):
        category_id = int(category["id"])
        row = {"category_id": category_id, "name": str(category["name"]), "instances": instances.get(category_id, 0)}
        for iou_type in evaluator.iou_types:
            row[f"{iou_type}_AP"] = row[f"{iou_type}_AP50"] = None
            if iou_type in precisions and category_id in precisions[iou_type][0]:
                cat_ids, precision, t50 = precisions[iou_type]
                k = cat_ids.index(category_id)
                row[f"{iou_type}_AP"] = _mean_or_none(precision[:, :, k])
                row[f"{iou_type}_AP50"] = _mean_or_none(precision[t50, :, k])
        rows.append(row)
    return rows


def precision_recall(
    evaluator: EvaluatedCoco, iou_type: str, iou_threshold: float = 0.5
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """``(recall, precision)``: ``recall`` is ``ndarray[R] float64``, COCOeval's recall thresholds
    (0, 0.01, ..., 1); ``precision`` maps category id -> ``ndarray[R] float64``, COCOeval's
    interpolated precision at those recalls for IoU ``iou_threshold`` (0.50, 0.55, ..., 0.95), all
    areas, ``max_dets`` (0 beyond the highest recall reached). Categories without ground truth in
    the evaluated images have no curve and are left out; with nothing evaluated both are empty."""
    if iou_type not in evaluator.iou_types:
        raise ValueError(f"iou_type {iou_type!r} was not evaluated; the evaluator computes {evaluator.iou_types}")
    coco_eval = evaluator.coco_evals.get(iou_type)
    if coco_eval is None:
        return np.zeros(0), {}
    precision = _precision(coco_eval, evaluator.max_dets)[_iou_index(coco_eval, iou_threshold)]  # [R, K]
    curves = {
        int(category_id): precision[:, k].copy()
        for k, category_id in enumerate(coco_eval.params.catIds)
        if (precision[:, k] > -1).all()
    }
    return np.asarray(coco_eval.params.recThrs, dtype=np.float64), curves
