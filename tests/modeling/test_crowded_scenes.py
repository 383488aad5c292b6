"""Crowded scenes: evaluation of hundreds to thousands of detections on one image.

pycocotools' ``mask.area`` overflows (uint8 shape buffer) for more than 255 RLEs in one call, so
any image with more than 255 detections used to crash the first validation with
``model.roi_heads.detections_per_img=300``. Perfect detections must give AP = 1 on both backends,
and the evaluator's COCO ``maxDets`` must follow ``detections_per_img``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from maskrcnn.evaluation import CocoEvaluator
from maskrcnn.evaluation.results import masks_to_rles, rle_areas

BACKENDS = ["faster_coco_eval", "pycocotools"]
SIDE, STEP, COLUMNS = 4, 6, 40  # 4x4 px objects on a 6 px grid, 40 per row


def _scene(tmp_path, num: int, num_categories: int):
    """One image holding ``num`` disjoint 4x4 squares, category ``1 + i % num_categories``.

    Returns (annotation file, H, W, boxes ndarray[num, 4] float32 xyxy, labels Tensor[num] int64).
    """
    rows = -(-num // COLUMNS)
    height, width = rows * STEP + 2, COLUMNS * STEP + 2
    boxes = [[1 + (i % COLUMNS) * STEP, 1 + (i // COLUMNS) * STEP] for i in range(num)]
    boxes = np.array([[x, y, x + SIDE, y + SIDE] for x, y in boxes], dtype=np.float32)
    labels = torch.arange(num) % num_categories + 1
    annotations = [
        {
            "id": i + 1,
            "image_id": 1,
            "category_id": int(labels[i]),
            "iscrowd": 0,
            "area": SIDE * SIDE,
            "bbox": [float(x0), float(y0), SIDE, SIDE],
            "segmentation": [[float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1)]],
        }
        for i, (x0, y0, x1, y1) in enumerate(boxes.tolist())
    ]
    coco = {
        "images": [{"id": 1, "file_name": "crowd.png", "height": height, "width": width}],
        "categories": [{"id": c, "name": f"cell{c}"} for c in range(1, num_categories + 1)],
        "annotations": annotations,
    }
    path = tmp_path / f"crowd{num}.json"
    path.write_text(json.dumps(coco))
    return str(path), height, width, boxes, labels


def _masks(boxes: np.ndarray, height: int, width: int, kind: str):
    binary = torch.zeros(len(boxes), 1, height, width, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.astype(int).tolist()):
        binary[i, 0, y0:y1, x0:x1] = True
    if kind == "bool":
        return binary
    if kind == "prob":
        return binary.float() * 0.9
    return mask_utils.encode(np.asfortranarray(binary[:, 0].permute(1, 2, 0).numpy().astype(np.uint8)))


# COCOeval caps detections per image AND category, so 300 in one category needs maxDets >= 300.
# The 1000-detection scene uses 4 categories only because pycocotools' pure-Python matching costs
# detections x ground truth per category (1000 x 1000 x 10 thresholds would take 15 s).
CASES = [(backend, *case) for backend in BACKENDS for case in [(300, 1, "prob"), (1000, 4, "rle")]]


@pytest.mark.parametrize(("backend", "num", "num_categories", "kind"), [*CASES, ("faster_coco_eval", 1000, 4, "bool")])
def test_perfect_crowded_detections_give_ap_one(tmp_path, backend, num, num_categories, kind):
    ann_file, height, width, boxes, labels = _scene(tmp_path, num, num_categories)
    detection = {
        "boxes": torch.from_numpy(boxes),
        "labels": labels,
        "scores": torch.linspace(1.0, 0.5, num),
        "masks": _masks(boxes, height, width, kind),
    }
    identity = {c: c for c in range(1, num_categories + 1)}
    evaluator = CocoEvaluator(ann_file, identity, max_dets=num, backend=backend)
    evaluator.update([detection], [1])
    metrics = evaluator.compute()
    assert list(evaluator.coco_evals["segm"].params.maxDets) == [1, 10, num]
    for iou_type in ("bbox", "segm"):
        for name in ("AP", "AP50", "AP75", f"AR{num}"):
            assert metrics[f"{iou_type}_{name}"] == pytest.approx(1.0), (iou_type, name)
    if num_categories == 1:
        # With the COCO default of 100 only the 100 best-scored count: recall 100 / num.
        evaluator = CocoEvaluator(ann_file, identity, max_dets=100, backend=backend)
        evaluator.update([detection], [1])
        assert evaluator.compute()["segm_AR100"] == pytest.approx(100 / num)


def test_rle_areas_of_more_than_255_masks_match_pixel_counts():
    rng = np.random.default_rng(0)
    binary = rng.random((600, 9, 7)) < 0.4  # 600 random masks
    rles = masks_to_rles(torch.from_numpy(binary), 1, (9, 7))
    assert rle_areas(rles).tolist() == binary.sum(axis=(1, 2)).tolist()
    assert rle_areas([]).shape == (0,)
