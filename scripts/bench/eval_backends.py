"""COCO evaluation (bbox + segm): faster-coco-eval (our default backend) vs pycocotools on the same
detections (``--task eval``).

Generates a synthetic COCO split (elliptic polygon ground truth) and Mask R-CNN-like detections
(jittered copies of the ground truth plus random false positives, rectangular RLE masks), then
times ``CocoEvaluator.compute()`` with both backends and checks that they report the same AP.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from maskrcnn.evaluation import CocoEvaluator


def rectangle_rle_counts(x0: int, y0: int, x1: int, y1: int, height: int, width: int) -> list[int]:
    """Uncompressed column-major RLE counts of the rectangle [y0:y1, x0:x1] (no dense mask needed)."""
    columns = x1 - x0
    counts = np.empty(2 * columns + 1, dtype=np.int64)
    counts[0] = x0 * height + y0
    counts[1::2] = y1 - y0
    counts[2:-1:2] = height - (y1 - y0)
    counts[-1] = (width - x1) * height + (height - y1)
    return counts.tolist()


def random_boxes(rng, n: int, height: int, width: int, min_size: int = 8) -> np.ndarray:
    """ndarray[n, 4] int64 xyxy boxes inside the image, sides in [min_size, image/2)."""
    w = rng.integers(min_size, width // 2, size=n)
    h = rng.integers(min_size, height // 2, size=n)
    x0 = rng.integers(0, width - w)
    y0 = rng.integers(0, height - h)
    return np.stack([x0, y0, x0 + w, y0 + h], axis=1)


def make_ground_truth(rng, num_images, gt_per_image, num_categories, height, width):
    """COCO dict with one elliptic polygon per object; category ids are non-contiguous (2k+1)."""
    images, annotations = [], []
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "height": height, "width": width, "file_name": f"{image_id:06d}.jpg"})
        boxes = random_boxes(rng, gt_per_image, height, width)
        cats = 2 * rng.integers(1, num_categories + 1, size=gt_per_image) + 1
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        radii = (boxes[:, 2:] - boxes[:, :2]) / 2
        for box, cat, c, r in zip(boxes, cats, centres, radii, strict=True):
            polygon = np.stack([c[0] + r[0] * np.cos(angles), c[1] + r[1] * np.sin(angles)], axis=1)
            x0, y0, x1, y1 = box.tolist()
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(cat),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float(np.pi * r[0] * r[1]),
                    "iscrowd": 0,
                    "segmentation": [polygon.round(2).ravel().tolist()],
                }
            )
    categories = [{"id": 2 * k + 1, "name": f"class_{k}"} for k in range(1, num_categories + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def make_detections(rng, coco, dets_per_image, num_categories, height, width):
    """Per image: two jittered copies of every gt box plus random boxes, all with RLE masks.

    Returns (detections, image_ids) in the `Detection` format with masks as RLE lists.
    """
    import torch

    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    detections, image_ids = [], []
    for image in coco["images"]:
        anns = by_image.get(image["id"], [])
        gt = np.array(
            [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns],
            dtype=np.int64,
        ).reshape(-1, 4)
        gt_labels = np.array([(a["category_id"] - 1) // 2 for a in anns], dtype=np.int64)
        copies = np.repeat(gt, 2, axis=0)
        copies = copies + rng.integers(-6, 7, size=copies.shape)
        n_random = max(dets_per_image - len(copies), 0)
        boxes = np.concatenate([copies, random_boxes(rng, n_random, height, width)])[:dets_per_image]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width - 1)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height - 1)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        labels = np.concatenate([np.repeat(gt_labels, 2), rng.integers(1, num_categories + 1, size=n_random)])
        labels = labels[:dets_per_image]
        scores = rng.uniform(0.05, 1.0, size=len(boxes))
        uncompressed = [
            {"size": [height, width], "counts": rectangle_rle_counts(*b, height, width)} for b in boxes.tolist()
        ]
        rles = mask_utils.frPyObjects(uncompressed, height, width)
        detections.append(
            {
                "boxes": torch.from_numpy(boxes.astype(np.float32)),
                "labels": torch.from_numpy(labels),
                "scores": torch.from_numpy(scores.astype(np.float32)),
                "masks": rles,
            }
        )
        image_ids.append(image["id"])
    return detections, image_ids


def run_eval_benchmark(
    num_images: int = 5000,
    gt_per_image: int = 7,
    dets_per_image: int = 100,
    categories: int = 20,
    height: int = 480,
    width: int = 640,
    seed: int = 0,
) -> dict:
    """Time ``CocoEvaluator.compute()`` (bbox + segm) with both backends on the same detections.

    Returns:
        {"seconds": {backend: s}, "metrics": {backend: metrics dict}, "num_images": int,
         "num_gt": int, "num_detections": int, "max_metric_diff": float}.
    """
    rng = np.random.default_rng(seed)
    coco = make_ground_truth(rng, num_images, gt_per_image, categories, height, width)
    detections, image_ids = make_detections(rng, coco, dets_per_image, categories, height, width)
    label_to_category_id = {k: 2 * k + 1 for k in range(1, categories + 1)}
    timings, metrics = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        ann_file = Path(tmp) / "instances.json"
        ann_file.write_text(json.dumps(coco))
        for backend in ("pycocotools", "faster_coco_eval"):
            evaluator = CocoEvaluator(str(ann_file), label_to_category_id, backend=backend)
            evaluator.update(detections, image_ids)
            tic = time.perf_counter()
            metrics[backend] = evaluator.compute()
            timings[backend] = time.perf_counter() - tic
    worst = max(abs(metrics["pycocotools"][k] - metrics["faster_coco_eval"][k]) for k in metrics["pycocotools"])
    return {
        "seconds": timings,
        "metrics": metrics,
        "num_images": num_images,
        "num_gt": len(coco["annotations"]),
        "num_detections": sum(len(d["scores"]) for d in detections),
        "max_metric_diff": worst,
    }


def eval_rows(
    num_images: int = 5000,
    gt_per_image: int = 7,
    dets_per_image: int = 100,
    categories: int = 20,
    height: int = 480,
    width: int = 640,
    seed: int = 0,
) -> list[tuple]:
    """Report row: seconds of bbox + segm COCOeval, faster-coco-eval (ours) vs pycocotools."""
    r = run_eval_benchmark(num_images, gt_per_image, dets_per_image, categories, height, width, seed)
    s, m = r["seconds"], r["metrics"]["faster_coco_eval"]
    print(
        f"eval: faster-coco-eval {s['faster_coco_eval']:.2f} s, pycocotools {s['pycocotools']:.2f} s, "
        f"bbox AP {m['bbox_AP']:.4f}, segm AP {m['segm_AP']:.4f}",
        flush=True,
    )
    return [
        (
            "eval",
            f"COCOeval bbox+segm, {r['num_images']} images [s]",
            s["faster_coco_eval"],
            s["pycocotools"],
            f"pycocotools (ours = faster-coco-eval backend); {r['num_detections']} detections, {r['num_gt']} gt; "
            f"bbox/segm AP {m['bbox_AP']:.4f}/{m['segm_AP']:.4f}; "
            f"max metric diff {r['max_metric_diff']:.1e}; lower is better",
        )
    ]
