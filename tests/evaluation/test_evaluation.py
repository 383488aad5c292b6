"""Tests of maskrcnn.evaluation.CocoEvaluator on a tiny hand-made COCO file."""

import json
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from maskrcnn.evaluation import CocoEvaluator

BACKENDS = ["faster_coco_eval", "pycocotools"]
LABEL_TO_CAT = {1: 3, 2: 7, 3: 12}  # non-contiguous COCO category ids
CAT_TO_LABEL = {c: label for label, c in LABEL_TO_CAT.items()}
IMAGES = {1: (64, 80), 2: (48, 64), 3: (64, 64), 4: (72, 96)}  # id -> (H, W)
GT = [  # (image id, category id, xywh)
    (1, 3, [5, 5, 20, 15]),
    (1, 7, [30, 20, 40, 30]),
    (2, 12, [10, 10, 30, 25]),
    (2, 3, [2, 30, 10, 10]),
    (3, 7, [0, 0, 64, 40]),
    (3, 12, [40, 45, 20, 15]),
    (4, 3, [10, 10, 25, 20]),
]
CROWD = (4, 3, [50, 30, 40, 35])  # iscrowd region, stored as RLE


def rect_mask(h, w, xyxy):
    m = np.zeros((h, w), dtype=np.uint8)
    x0, y0, x1, y1 = (int(round(v)) for v in xyxy)
    m[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = 1
    return m


@pytest.fixture(scope="module")
def ann_file(tmp_path_factory):
    images = [{"id": i, "height": h, "width": w, "file_name": f"{i}.jpg"} for i, (h, w) in IMAGES.items()]
    cats = [{"id": c, "name": n} for c, n in [(3, "cat"), (7, "dog"), (12, "zebra")]]
    anns = []
    for k, (img, cat, (x, y, w, h)) in enumerate(GT, start=1):
        poly = [x, y, x + w, y, x + w, y + h, x, y + h]
        anns.append(
            {
                "id": k,
                "image_id": img,
                "category_id": cat,
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
                "segmentation": [poly],
            }
        )
    img, cat, (x, y, w, h) = CROWD
    rle = mask_utils.encode(np.asfortranarray(rect_mask(*IMAGES[img], [x, y, x + w, y + h])))
    anns.append(
        {
            "id": len(anns) + 1,
            "image_id": img,
            "category_id": cat,
            "bbox": [x, y, w, h],
            "area": w * h,
            "iscrowd": 1,
            "segmentation": {"size": list(IMAGES[img]), "counts": rle["counts"].decode()},
        }
    )
    path = tmp_path_factory.mktemp("coco") / "instances.json"
    path.write_text(json.dumps({"images": images, "categories": cats, "annotations": anns}))
    return str(path)


def to_detection(image_id, boxes, labels, scores, masks):
    """masks: ndarray[D, H, W] uint8 -> Detection with probability masks [D, 1, H, W]."""
    h, w = IMAGES[image_id]
    return {
        "boxes": torch.tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "masks": torch.tensor(np.asarray(masks, dtype=np.float32).reshape(-1, 1, h, w)),
    }


def perfect_detections(ann_file, image_ids, score=1.0, shift=0):
    """Ground truth (non-crowd) as detections; `shift` moves boxes and masks right by pixels."""
    coco = COCO(ann_file)
    dets = []
    for img in image_ids:
        anns = [a for a in coco.imgToAnns[img] if not a["iscrowd"]]
        boxes = [
            [a["bbox"][0] + shift, a["bbox"][1], a["bbox"][0] + a["bbox"][2] + shift, a["bbox"][1] + a["bbox"][3]]
            for a in anns
        ]
        masks = [np.roll(coco.annToMask(a), shift, axis=1) for a in anns]
        dets.append(
            to_detection(img, boxes, [CAT_TO_LABEL[a["category_id"]] for a in anns], [score] * len(anns), masks)
        )
    return dets


def noisy_detection(image_id):
    """Deterministic (per image id) imperfect detections: jittered gt plus false positives."""
    rng = np.random.default_rng(image_id)
    h, w = IMAGES[image_id]
    boxes, labels = [], []
    for img, cat, (x, y, bw, bh) in GT:
        if img == image_id:
            jitter = rng.integers(-3, 4, size=4)
            boxes.append([x + jitter[0], y + jitter[1], x + bw + jitter[2], y + bh + jitter[3]])
            labels.append(CAT_TO_LABEL[cat])
    for _ in range(3):
        x0, y0 = rng.integers(0, w - 10), rng.integers(0, h - 10)
        boxes.append([x0, y0, x0 + rng.integers(5, 10), y0 + rng.integers(5, 10)])
        labels.append(int(rng.integers(1, 4)))
    scores = rng.uniform(0.05, 1.0, size=len(boxes))
    masks = [rect_mask(h, w, b) for b in boxes]
    return to_detection(image_id, boxes, labels, scores, masks)


def evaluate(ann_file, dets, image_ids, **kwargs):
    evaluator = CocoEvaluator(ann_file, LABEL_TO_CAT, **kwargs)
    evaluator.update(dets, image_ids)
    return evaluator.compute()


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_detections_give_ap_one(ann_file, backend):
    ids = list(IMAGES)
    evaluator = CocoEvaluator(ann_file, LABEL_TO_CAT, backend=backend)
    evaluator.update(perfect_detections(ann_file, ids), ids)
    metrics = evaluator.compute()
    for iou_type in ("bbox", "segm"):
        for name in ("AP", "AP50", "AP75", "AR100"):
            assert metrics[f"{iou_type}_{name}"] == pytest.approx(1.0), (iou_type, name)
    table = evaluator.per_category_table()
    for text in ("cat", "dog", "zebra", "12", "1.000"):
        assert text in table
    assert "IoU metric: segm" in evaluator.summary()


def test_backends_agree(ann_file, capsys):
    ids = list(IMAGES)
    dets = [noisy_detection(i) for i in ids]
    results = [evaluate(ann_file, dets, ids, backend=b) for b in BACKENDS]
    # Our read-out of the accumulated arrays equals pycocotools' own summarize() (-1 -> NaN).
    reference = CocoEvaluator(ann_file, LABEL_TO_CAT, backend="pycocotools")
    reference.update(dets, ids)
    reference.compute()
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    for iou_type in ("bbox", "segm"):
        coco_eval = reference.coco_evals[iou_type]
        coco_eval.summarize()
        for name, stat in zip(names, coco_eval.stats, strict=True):
            expected = stat if stat > -1 else math.nan  # "not computable" (here: no large objects)
            assert results[1][f"{iou_type}_{name}"] == pytest.approx(expected, abs=1e-12, nan_ok=True), name
        assert math.isnan(results[1][f"{iou_type}_APl"]) and results[1][f"{iou_type}_APm"] > 0
    capsys.readouterr()
    assert results[0].keys() == results[1].keys()
    assert 0.1 < results[0]["bbox_AP"] < 0.99  # imperfect, so the comparison means something
    for key in results[0]:
        assert results[0][key] == pytest.approx(results[1][key], abs=1e-6, nan_ok=True), key


@pytest.mark.parametrize("backend", BACKENDS)
def test_shifted_boxes_lower_ap(ann_file, backend):
    ids = list(IMAGES)
    ap = [evaluate(ann_file, perfect_detections(ann_file, ids, shift=s), ids, backend=backend) for s in (0, 1, 3)]
    for iou_type in ("bbox", "segm"):
        values = [m[f"{iou_type}_AP"] for m in ap]
        assert values[0] == pytest.approx(1.0)
        assert values[0] > values[1] > values[2], (iou_type, values)
        assert ap[2][f"{iou_type}_AP50"] >= ap[2][f"{iou_type}_AP75"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_detection_on_crowd_region_is_not_false_positive(ann_file, backend):
    ids = list(IMAGES)
    h, w = IMAGES[4]

    def with_extra(box):
        dets = perfect_detections(ann_file, ids, score=0.9)
        extra = to_detection(4, [box], [1], [0.99], [rect_mask(h, w, box)])
        dets[3] = {k: torch.cat([dets[3][k], extra[k]]) for k in dets[3]}
        return evaluate(ann_file, dets, ids, backend=backend)

    on_crowd = with_extra([50, 30, 90, 65])
    elsewhere = with_extra([0, 50, 8, 60])  # overlaps nothing: a real false positive
    for iou_type in ("bbox", "segm"):
        assert on_crowd[f"{iou_type}_AP"] == pytest.approx(1.0)
        assert elsewhere[f"{iou_type}_AP"] < 0.95


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_updated_images_are_evaluated(ann_file, backend):
    evaluator = CocoEvaluator(ann_file, LABEL_TO_CAT, backend=backend)
    evaluator.update(perfect_detections(ann_file, [1, 3]), [1, 3])
    evaluator.update([noisy_detection(3)], [3])  # a repeated image is counted once (first wins)
    metrics = evaluator.compute()
    assert evaluator.image_ids == [1, 3]
    assert sorted(evaluator.coco_evals["bbox"].params.imgIds) == [1, 3]
    assert metrics["bbox_AP"] == pytest.approx(1.0)  # images 2 and 4 would add misses
    assert metrics["segm_AR100"] == pytest.approx(1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_detections_do_not_crash(ann_file, backend):
    evaluator = CocoEvaluator(ann_file, LABEL_TO_CAT, backend=backend)
    assert all(math.isnan(v) for v in evaluator.compute().values())  # nothing updated: nothing to measure
    empty = [to_detection(i, np.zeros((0, 4)), [], [], np.zeros((0, *IMAGES[i]))) for i in IMAGES]
    evaluator.update(empty, list(IMAGES))
    metrics = evaluator.compute()
    # objects there, none found: 0; no large object in the set: not computable, NaN (not a 0)
    assert math.isnan(metrics["segm_APl"]) and math.isnan(metrics["bbox_ARl"])
    assert all(v == 0.0 for k, v in metrics.items() if not k.endswith("l"))
    assert isinstance(evaluator.per_category_table(), str)
    evaluator.reset()
    assert evaluator.image_ids == []


def test_mask_formats_agree(ann_file):
    ids = list(IMAGES)
    rng = np.random.default_rng(0)
    prob_dets, bool_dets, rle_dets = [], [], []
    for det in (noisy_detection(i) for i in ids):
        binary = det["masks"] > 0.5
        noise = torch.tensor(rng.uniform(0.0, 0.45, size=binary.shape), dtype=torch.float32)
        prob = torch.where(binary, 0.55 + noise, noise)  # probabilities, same binarisation
        encoded = mask_utils.encode(np.asfortranarray(binary[:, 0].permute(1, 2, 0).numpy().astype(np.uint8)))
        prob_dets.append({**det, "masks": prob})
        bool_dets.append({**det, "masks": binary})
        rle_dets.append({**det, "masks": encoded})  # bytes counts are accepted as well
    results = [evaluate(ann_file, d, ids) for d in (prob_dets, bool_dets, rle_dets)]
    assert results[0]["segm_AP"] > 0.1
    assert results[0] == results[1] == results[2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_dets_is_respected(ann_file, backend):
    # COCOeval caps detections per image AND category: add a higher-scored wrong "cat"
    # detection to image 1 so that max_dets=1 pushes out its true positive.
    ids = list(IMAGES)
    dets = perfect_detections(ann_file, ids, score=0.9)
    h, w = IMAGES[1]
    extra = to_detection(1, [[60, 50, 70, 60]], [1], [0.95], [rect_mask(h, w, [60, 50, 70, 60])])
    dets[0] = {k: torch.cat([dets[0][k], extra[k]]) for k in dets[0]}
    evaluator = CocoEvaluator(ann_file, LABEL_TO_CAT, backend=backend, max_dets=50)
    evaluator.update(dets, ids)
    full = evaluator.compute()
    assert list(evaluator.coco_evals["segm"].params.maxDets) == [1, 10, 50]
    assert full["bbox_AR50"] == pytest.approx(1.0) and "bbox_AR100" not in full
    evaluator = CocoEvaluator(ann_file, LABEL_TO_CAT, backend=backend, max_dets=1)
    evaluator.update(dets, ids)
    one = evaluator.compute()
    assert list(evaluator.coco_evals["bbox"].params.maxDets) == [1, 10]
    for iou_type in ("bbox", "segm"):
        assert one[f"{iou_type}_AR1"] == pytest.approx(full[f"{iou_type}_AR1"])
        assert one[f"{iou_type}_AR1"] < 1.0
        assert one[f"{iou_type}_AP"] < full[f"{iou_type}_AP"]


def test_bad_input_raises_clear_errors(ann_file):
    evaluator = CocoEvaluator(ann_file, LABEL_TO_CAT)
    det = perfect_detections(ann_file, [1])[0]
    with pytest.raises(KeyError, match="image id 99"):
        evaluator.update([det], [99])
    with pytest.raises(ValueError, match="image 1: labels \\[5\\]"):
        evaluator.update([{**det, "labels": torch.full_like(det["labels"], 5)}], [1])
    with pytest.raises(ValueError, match="image 1: masks of shape"):
        evaluator.update([{**det, "masks": det["masks"][..., :10]}], [1])
    with pytest.raises(ValueError, match="category ids \\[99\\]"):
        CocoEvaluator(ann_file, {1: 99})
    with pytest.raises(ValueError, match="backend"):
        CocoEvaluator(ann_file, LABEL_TO_CAT, backend="detectron2")
    string_keys = CocoEvaluator(ann_file, {str(k): v for k, v in LABEL_TO_CAT.items()})  # as from a config
    string_keys.update([det], [1])
    assert string_keys.compute()["segm_AP"] == pytest.approx(1.0)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, ann_file, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        shard = [[1, 2, 3], [3, 4]][rank]  # image 3 on both ranks, like a padding sampler
        evaluator = CocoEvaluator(ann_file, LABEL_TO_CAT)
        evaluator.update([noisy_detection(i) for i in shard], shard)
        evaluator.gather()
        result = {"image_ids": evaluator.image_ids, "metrics": evaluator.compute()}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_ddp_gather_deduplicates(ann_file, tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), ann_file, str(tmp_path)), nprocs=2, join=True)
    ids = list(IMAGES)
    expected = evaluate(ann_file, [noisy_detection(i) for i in ids], ids)
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["image_ids"] == ids
        assert result["metrics"] == pytest.approx(expected, abs=1e-12, nan_ok=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_category_results_and_pr_curves_from_the_one_evaluation(ann_file, backend):
    ids = list(IMAGES)
    perfect = CocoEvaluator(ann_file, LABEL_TO_CAT, backend=backend)
    perfect.update(perfect_detections(ann_file, ids), ids)
    perfect.compute()
    rows = perfect.per_category_results()
    assert [(r["category_id"], r["name"], r["instances"]) for r in rows] == [
        (3, "cat", 3),
        (7, "dog", 2),
        (12, "zebra", 2),
    ]
    assert all(r[k] == pytest.approx(1.0) for r in rows for k in ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50"))
    recall, curves = perfect.precision_recall("segm", 0.75)
    assert sorted(curves) == [3, 7, 12] and all((c == 1.0).all() for c in curves.values())

    noisy = CocoEvaluator(ann_file, LABEL_TO_CAT, backend=backend)
    noisy.update([noisy_detection(i) for i in ids], ids)
    metrics = noisy.compute()
    evals = dict(noisy.coco_evals)
    rows = noisy.per_category_results()
    assert noisy.coco_evals == evals  # read from the evaluation that ran, not a new one
    for iou_type in ("bbox", "segm"):
        assert np.mean([r[f"{iou_type}_AP"] for r in rows]) == pytest.approx(metrics[f"{iou_type}_AP"], abs=1e-12)
        assert np.mean([r[f"{iou_type}_AP50"] for r in rows]) == pytest.approx(metrics[f"{iou_type}_AP50"], abs=1e-12)
        recall, curves = noisy.precision_recall(iou_type, 0.5)
        for r in rows:  # AP50 is the mean of the IoU-0.5 curve over the 101 recall points
            assert curves[r["category_id"]].mean() == pytest.approx(r[f"{iou_type}_AP50"], abs=1e-12)
    assert 0.0 < metrics["bbox_AP"] < 1.0
    with pytest.raises(ValueError, match="0.52 is not a COCOeval IoU threshold"):
        noisy.precision_recall("bbox", 0.52)

    # Image 1 only has cats and dogs: zebra has no ground truth, so no AP and no curve.
    partial = CocoEvaluator(ann_file, LABEL_TO_CAT, backend=backend)
    partial.update(perfect_detections(ann_file, [1]), [1])
    zebra = partial.per_category_results()[2]
    assert (zebra["instances"], zebra["segm_AP"], zebra["bbox_AP50"]) == (0, None, None)
    assert 12 not in partial.precision_recall("bbox")[1]


def test_backends_give_the_same_per_category_results(ann_file):
    ids = list(IMAGES)
    results = []
    for backend in BACKENDS:
        evaluator = CocoEvaluator(ann_file, LABEL_TO_CAT, backend=backend)
        evaluator.update([noisy_detection(i) for i in ids], ids)
        results.append((evaluator.per_category_results(), evaluator.precision_recall("segm")[1]))
    (rows_a, curves_a), (rows_b, curves_b) = results
    assert [a.keys() for a in rows_a] == [b.keys() for b in rows_b]
    for a, b in zip(rows_a, rows_b, strict=True):
        for key, value in a.items():
            assert b[key] == (value if isinstance(value, (str, int)) else pytest.approx(value, abs=1e-12)), key
    for category_id in curves_a:
        np.testing.assert_allclose(curves_a[category_id], curves_b[category_id], atol=1e-12)
