"""COCO box / mask AP of `Detection`s against a COCO annotation file, DDP aware.

Usage (one validation epoch):
    evaluator.reset()
    evaluator.update(detections, image_ids)   # every batch, every rank
    evaluator.gather()                        # every rank (collective)
    metrics = evaluator.compute()             # {"bbox_AP": 0.37, ...}

Reported numbers are COCO-style fractions in [0, 1] (not percent). COCOeval marks a metric it
cannot compute (no ground truth in that category / area range among the evaluated images) with
-1; such metrics are reported as NaN, as detectron2 does: a 0.0 would read as "found nothing"
(e.g. APl = 0 on a set without large objects). Lightning's ModelCheckpoint ranks a NaN monitor
value last.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch.distributed as dist

from maskrcnn.evaluation import per_category
from maskrcnn.evaluation.results import ImageResults, detection_to_results

Backend = Literal["faster_coco_eval", "pycocotools"]
AREA_SUFFIXES = ("s", "m", "l")  # COCOeval area ranges 1..3 are small, medium, large


def _silent() -> contextlib.redirect_stdout[io.StringIO]:
    """Swallow the progress prints both COCO libraries emit on stdout."""
    return contextlib.redirect_stdout(io.StringIO())


def _backend_classes(backend: str) -> tuple[Any, Callable[..., Any]]:
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO, COCOeval_faster

        def make_eval(gt: Any, dt: Any, iou_type: str) -> Any:
            return COCOeval_faster(gt, dt, iou_type, print_function=lambda *args, **kwargs: None)

        return COCO, make_eval
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    raise ValueError(f"unknown COCO evaluation backend {backend!r}; use 'faster_coco_eval' or 'pycocotools'")


NOT_COMPUTABLE = float("nan")  # COCOeval's -1: no ground truth for that metric among the evaluated images


def _mean_valid(values: np.ndarray) -> float:
    """Mean over entries COCOeval computed (> -1); -1 if there are none."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


class CocoEvaluator:
    """Accumulates detections of a validation run and computes COCO AP / AR.

    Args:
        annotation_file: path of the COCO json with the ground truth of the evaluated split.
        label_to_category_id: contiguous label (1..K) -> COCO category id.
        iou_types: subset of ("bbox", "segm").
        max_dets: detections per image COCOeval keeps; match the model's detections_per_img.
            params.maxDets becomes [1, 10, max_dets] (sorted and de-duplicated if max_dets <= 10).
        backend: "faster_coco_eval" (C++ evaluation, much faster) or "pycocotools" (reference).
    """

    def __init__(
        self,
        annotation_file: str,
        label_to_category_id: dict[int, int],
        iou_types: tuple[str, ...] = ("bbox", "segm"),
        max_dets: int = 100,
        backend: Backend = "faster_coco_eval",
    ) -> None:
        for iou_type in iou_types:
            if iou_type not in ("bbox", "segm"):
                raise ValueError(f"unsupported iou_type {iou_type!r}; expected 'bbox' and/or 'segm'")
        if max_dets < 1:
            raise ValueError(f"max_dets must be >= 1, got {max_dets}")
        self.iou_types = tuple(iou_types)
        self.max_dets = int(max_dets)
        self.max_dets_list = sorted({1, 10, self.max_dets})
        self.backend = backend
        self._coco_cls, self._make_eval = _backend_classes(backend)
        with _silent():
            self.coco_gt = self._coco_cls(str(annotation_file))
        # Hydra / json configs may deliver the keys as strings.
        label_to_category_id = {int(k): int(v) for k, v in label_to_category_id.items()}
        gt_category_ids = set(self.coco_gt.getCatIds())
        unknown = sorted(set(label_to_category_id.values()) - gt_category_ids)
        if unknown:
            raise ValueError(f"{annotation_file}: category ids {unknown} of label_to_category_id are not in the file")
        lookup = np.full(max(label_to_category_id, default=0) + 1, -1, dtype=np.int64)
        for label, category_id in label_to_category_id.items():
            lookup[int(label)] = int(category_id)
        self._category_lookup = lookup
        self._results: dict[int, ImageResults] = {}
        self._metrics: dict[str, float] | None = None
        self._per_category: dict[str, dict[int, float]] = {}
        self._summary = ""
        # COCOeval objects of the last compute(), kept for inspection (params, eval arrays).
        self.coco_evals: dict = {}

    def reset(self) -> None:
        """Forget all detections and computed metrics (call at the start of each epoch)."""
        self._results = {}
        self._metrics = None
        self._per_category = {}
        self._summary = ""
        self.coco_evals = {}

    @property
    def image_ids(self) -> list[int]:
        """Sorted ids of the images that have been updated (on this rank, or all ranks after gather)."""
        return sorted(self._results)

    def update(self, detections: list[dict], image_ids: list[int]) -> None:
        """Convert and store the detections of a batch.

        detections: list of `Detection` dicts (docs/design.md), boxes in original image pixels.
        image_ids: COCO image id of each detection dict.
        An image id seen before is skipped: padding samplers may repeat images and every image
        must be counted once.
        """
        if len(detections) != len(image_ids):
            raise ValueError(f"update(): {len(detections)} detections but {len(image_ids)} image ids")
        with_masks = "segm" in self.iou_types
        for detection, image_id in zip(detections, image_ids, strict=True):
            image_id = int(image_id)
            if image_id in self._results:
                continue
            image_info = self.coco_gt.imgs.get(image_id)
            if image_info is None:
                raise KeyError(f"image id {image_id} is not in the annotation file")
            image_size = (int(image_info["height"]), int(image_info["width"]))
            self._results[image_id] = detection_to_results(
                detection, image_id, self._category_lookup, image_size, with_masks
            )
        self._metrics = None

    def gather(self) -> None:
        """Collect the results of all ranks onto every rank (collective; no-op without DDP).

        Images present on several ranks (sampler padding) are kept once, from the lowest rank.
        """
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        parts: list[dict[int, ImageResults] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self._results)
        merged: dict[int, ImageResults] = {}
        for part in parts:
            assert part is not None  # filled in by all_gather_object
            for image_id, result in part.items():
                merged.setdefault(image_id, result)
        self._results = merged
        self._metrics = None

    def _detections_coco(self, iou_type: str, image_ids: list[int]) -> Any:
        """Detections as a COCO object of the backend (built directly rather than via loadRes,
        which crashes on an empty result list in pycocotools)."""
        annotations = []
        for image_id in image_ids:
            annotations.extend(self._results[image_id].rows(image_id, iou_type))
        for index, annotation in enumerate(annotations, start=1):
            annotation["id"] = index
        coco_dt = self._coco_cls()
        coco_dt.dataset = {
            "images": self.coco_gt.dataset["images"],
            "categories": self.coco_gt.dataset["categories"],
            "annotations": annotations,
        }
        with _silent():
            coco_dt.createIndex()
        return coco_dt

    def _evaluate(self, iou_type: str, image_ids: list[int]) -> Any:
        coco_eval = self._make_eval(self.coco_gt, self._detections_coco(iou_type, image_ids), iou_type)
        coco_eval.params.imgIds = list(image_ids)
        coco_eval.params.maxDets = list(self.max_dets_list)
        with _silent():
            coco_eval.evaluate()
            coco_eval.accumulate()
        return coco_eval

    def _read_metrics(self, iou_type: str, coco_eval: Any) -> dict[str, float]:
        """COCO summary numbers from the accumulated precision / recall arrays.

        Read directly instead of through `summarize()` because pycocotools' summarize hard-codes
        maxDets=100 and silently yields -1 for any other max_dets.
        """
        params = coco_eval.params
        precision = np.asarray(coco_eval.eval["precision"])  # [T, R, K, A, M]
        recall = np.asarray(coco_eval.eval["recall"])  # [T, K, A, M]
        iou_thrs = np.asarray(params.iouThrs)
        m = list(params.maxDets).index(self.max_dets)
        t50, t75 = (int(np.argmin(np.abs(iou_thrs - thr))) for thr in (0.5, 0.75))
        raw = {
            "AP": _mean_valid(precision[:, :, :, 0, m]),
            "AP50": _mean_valid(precision[t50, :, :, 0, m]),
            "AP75": _mean_valid(precision[t75, :, :, 0, m]),
        }
        for a, suffix in enumerate(AREA_SUFFIXES, start=1):
            raw[f"AP{suffix}"] = _mean_valid(precision[:, :, :, a, m])
        for mi, max_det in enumerate(params.maxDets):
            raw[f"AR{max_det}"] = _mean_valid(recall[:, :, 0, mi])
        for a, suffix in enumerate(AREA_SUFFIXES, start=1):
            raw[f"AR{suffix}"] = _mean_valid(recall[:, :, a, m])
        self._per_category[iou_type] = {
            int(category_id): _mean_valid(precision[:, :, k, 0, m]) for k, category_id in enumerate(params.catIds)
        }
        self._summary += f"IoU metric: {iou_type}\n" + "".join(
            f"  {name:<6} = {value:0.3f}\n" for name, value in raw.items()
        )
        return {f"{iou_type}_{name}": value if value > -1 else NOT_COMPUTABLE for name, value in raw.items()}

    def compute(self) -> dict[str, float]:
        """COCO metrics over the updated images: keys `{bbox,segm}_{AP, AP50, AP75, APs, APm, APl,
        AR1, AR10, AR<max_dets>, ARs, ARm, ARl}`, floats in [0, 1]; NaN where COCO cannot compute one.

        Under DDP call `gather()` on every rank first, or each rank only sees its own shard.
        With no updated image at all every metric is NaN.
        """
        if self._metrics is not None:
            return dict(self._metrics)
        image_ids = self.image_ids
        metrics: dict[str, float] = {}
        self._per_category = {}
        self.coco_evals = {}
        self._summary = f"COCO evaluation ({self.backend}) of {len(image_ids)} images, maxDets={self.max_dets}\n"
        for iou_type in self.iou_types:
            if not image_ids:
                # pycocotools treats imgIds=[] as "all images"; never evaluate an empty selection.
                names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
                names += [f"AR{d}" for d in self.max_dets_list] + ["ARs", "ARm", "ARl"]
                metrics.update({f"{iou_type}_{name}": NOT_COMPUTABLE for name in names})
                self._per_category[iou_type] = {}
                continue
            self.coco_evals[iou_type] = self._evaluate(iou_type, image_ids)
            metrics.update(self._read_metrics(iou_type, self.coco_evals[iou_type]))
        self._metrics = metrics
        return dict(metrics)

    def summary(self) -> str:
        """Human-readable summary of the last `compute()` (raw COCO values, -1 = not computable)."""
        if self._metrics is None:
            self.compute()
        return self._summary

    def per_category_table(self) -> str:
        """Table of per-category AP (IoU 0.50:0.95, all areas) per iou type; '-' = no ground truth."""
        if self._metrics is None:
            self.compute()
        categories = sorted(self.coco_gt.loadCats(self.coco_gt.getCatIds()), key=lambda c: c["id"])
        name_width = max([len("category")] + [len(str(c["name"])) for c in categories])
        header = f"{'id':>5}  {'category':<{name_width}}" + "".join(f"  {t + ' AP':>8}" for t in self.iou_types)
        lines = [header, "-" * len(header)]
        for category in categories:
            cells = []
            for iou_type in self.iou_types:
                value = self._per_category.get(iou_type, {}).get(int(category["id"]), -1.0)
                cells.append(f"  {value:8.3f}" if value > -1 else f"  {'-':>8}")
            lines.append(f"{category['id']:>5}  {str(category['name']):<{name_width}}" + "".join(cells))
        return "\n".join(lines)

    def per_category_results(self) -> list[dict]:
        """Per-category instances, AP and AP50 of the last `compute()`; see `per_category.per_category_results`."""
        if self._metrics is None:
            self.compute()
        return per_category.per_category_results(self)

    def precision_recall(self, iou_type: str, iou_threshold: float = 0.5) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Per-category PR curves of the last `compute()`; see `per_category.precision_recall`."""
        if self._metrics is None:
            self.compute()
        return per_category.precision_recall(self, iou_type, iou_threshold)
