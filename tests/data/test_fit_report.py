"""Dataset-fit report: golden numbers on hand-computable data, the shipped nuts set, a dense
small-object set, bad input, and the CLI end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.config import ROOT
from maskrcnn.data.fit.anchors import anchor_shapes, best_anchor_iou, fitness, training_scale
from maskrcnn.data.fit.report import compute_fit_report
from maskrcnn.data.fit.report_text import format_report
from maskrcnn.errors import DatasetError

NUTS = ROOT / "tests" / "assets" / "nuts" / "annotations.json"
DEFAULT_ANCHORS = [[32], [64], [128], [256], [512]]
RATIOS = [[0.5, 1.0, 2.0]] * 5


def write_coco(path: Path, images: list[tuple[int, int, int]], anns: list[dict], categories: dict[int, str]) -> Path:
    """images: (id, width, height); anns: dicts with image_id, category_id, bbox (+ iscrowd). An
    annotation without "segmentation" gets its bbox as a rectangle polygon: boxes are measured from
    masks, as training does (the report skips an annotation without a usable one)."""

    def with_mask(a: dict) -> dict:
        if "segmentation" in a or "bbox" not in a:
            return a
        x, y, w, h = a["bbox"]
        return {**a, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}

    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": w, "height": h} for i, w, h in images],
        "annotations": [{"id": k + 1, "iscrowd": 0, **with_mask(a)} for k, a in enumerate(anns)],
        "categories": [{"id": c, "name": n} for c, n in categories.items()],
    }
    path.write_text(json.dumps(data))
    return path


@pytest.fixture()
def golden_json(tmp_path) -> Path:
    """Image 1 (800x800, training scale exactly 1): squares of side 1..100 px - sides 1..5 are the
    class "rare", the rest "common" - plus one crowd region and one invalid (negative-width) box.
    Image 2 (2000x500, scale 1333/2000 = 0.6665): no instances."""
    anns = [
        {"image_id": 1, "category_id": 1 if s <= 5 else 2, "bbox": [10.0, 10.0, float(s), float(s)]}
        for s in range(1, 101)
    ]
    anns.append({"image_id": 1, "category_id": 2, "bbox": [0, 0, 400, 400], "iscrowd": 1})
    anns.append({"image_id": 1, "category_id": 2, "bbox": [0, 0, -5, 10]})
    return write_coco(tmp_path / "golden.json", [(1, 800, 800), (2, 2000, 500)], anns, {1: "rare", 2: "common"})


def test_golden_numbers(golden_json):
    r = compute_fit_report(
        golden_json,
        min_size=800,
        max_size=1333,
        anchor_sizes=DEFAULT_ANCHORS,
        aspect_ratios=RATIOS,
        detections_per_img=50,
    )
    t = r.splits["train"]
    assert (t.images, t.instances, t.crowd, t.images_without_instances) == (2, 100, 1, 1)
    assert t.invalid == {"polygon lies entirely outside the image (zero area after clipping)": 1}
    assert t.invalid_examples[0]["annotation_id"] == 102
    assert t.instances_per_class == {"rare": 5, "common": 95}
    assert (t.max_instances, t.max_instances_image_id, t.images_over_detections) == (100, 1, 1)
    assert t.image_scale["min"] == pytest.approx(1333 / 2000) and t.image_scale["max"] == 1.0
    # np.percentile (linear) of 1..100: p = 1 + 99 q.
    expected = {"min": 1, "p1": 1.99, "p5": 5.95, "p50": 50.5, "p95": 95.05, "p99": 99.01, "max": 100}
    assert t.sizes == pytest.approx(expected)
    assert t.frac_below_half_smallest == pytest.approx(0.15)  # sides 1..15 < 16
    assert t.frac_above_twice_largest == 0.0
    # Square side s vs. square anchor a: IoU = (min/max)^2. Below 0.5: s <= 22. Below 0.7: s <= 26,
    # 39..53 (between 32 and 64), 77..100 (between 64 and 128) = 26 + 15 + 24.
    assert t.frac_iou_below_half == pytest.approx(0.22)
    assert t.frac_iou_below_fg == pytest.approx(0.65)

    s = r.suggestion
    assert not s.keep_anchors and s.anchor_sizes[0][0] < 32
    assert all(b[0] == 2 * a[0] for a, b in zip(s.anchor_sizes, s.anchor_sizes[1:], strict=False))
    assert s.frac_iou_below_half < 0.22 and s.best_doubling_fitness >= s.configured_fitness + 0.01
    # p5 5.95 px needs x2.69 to reach 16 px; capped at min_size 1333; max_size follows 1333 * 1333/800.
    assert (s.min_size, s.max_size) == (1333, 2221)
    assert s.p5_at_min_size == pytest.approx(5.95 * 1333 / 800) and "capped" in s.note

    small, crowded = (next(w for w in r.warnings if key in w.message) for key in ("below 16 px", "detections_per_img"))
    assert small.message.startswith("15.0% of training objects")
    assert small.overrides == [
        "model.rpn.anchor_sizes='[" + ",".join(f"[{a[0]}]" for a in s.anchor_sizes) + "]'",
        "model.transform.min_size=1333 model.transform.max_size=2221",
    ]
    assert "train: image 1 has 100 instances > detections_per_img=50" in crowded.message
    assert crowded.overrides == ["model.roi_heads.detections_per_img=100"]
    rare = next(w for w in r.warnings if "fewer than 10" in w.message)
    assert "rare (5)" in rare.message and "common" not in rare.message and rare.override is None
    assert any("skipped 1 invalid" in w.message and "annotation 102" in w.message for w in r.warnings)
    assert not any("twice the largest" in w.message for w in r.warnings)
    json.dumps(r.to_dict())  # serialisable


def test_resize_rule_and_multiscale_mixture(tmp_path):
    scale = training_scale(np.array([800, 400, 2000]), np.array([600, 300, 500]), [800], 1333)
    assert scale[0] == pytest.approx([800 / 600, 800 / 300, 1333 / 2000])
    one = [{"image_id": 7, "category_id": 1, "bbox": [0, 0, 100, 100]}]
    path = write_coco(tmp_path / "one.json", [(7, 800, 800)], one, {1: "a"})
    r = compute_fit_report(path, min_size=[400, 800], max_size=1333)
    assert r.splits["train"].sizes["min"] == pytest.approx(50) and r.splits["train"].sizes["max"] == pytest.approx(100)
    assert r.splits["train"].sizes["p50"] == pytest.approx(75)


def test_anchor_shapes_and_iou_match_torchvision():
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import box_iou

    sizes, ratios = [[32], [64], [128], [256], [512]], [[0.5, 1.0, 2.0]] * 5
    generator = AnchorGenerator(tuple(tuple(s) for s in sizes), tuple(tuple(r) for r in ratios))
    cell = torch.cat(generator.cell_anchors)  # [15, 4] xyxy centred at 0
    wh, level = anchor_shapes(sizes, ratios)
    assert np.array_equal(wh, (cell[:, 2:] - cell[:, :2]).numpy())
    assert level.tolist() == [i for i in range(5) for _ in range(3)]
    rng = np.random.default_rng(0)
    w, h = rng.uniform(2, 900, 200), rng.uniform(2, 900, 200)
    boxes = torch.tensor(np.stack([-w / 2, -h / 2, w / 2, h / 2], 1))
    anchors = torch.tensor(np.concatenate([-wh / 2, wh / 2], 1))
    best, _ = best_anchor_iou(w, h, wh)
    assert best == pytest.approx(box_iou(boxes, anchors).max(dim=1).values.numpy())
    assert fitness(np.array([0.4, 0.6, 0.8])) == pytest.approx(1.4 / 3)


def test_nuts_counts_match_the_json(monkeypatch):
    data = json.loads(NUTS.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    per_image = Counter(a["image_id"] for a in data["annotations"])
    per_class = Counter(a["category_id"] for a in data["annotations"])
    r = compute_fit_report(NUTS, NUTS)
    assert r.classes == ["date", "fig", "hazelnut"]
    for split in r.splits.values():
        assert (split.images, split.instances, split.crowd, split.invalid) == (18, 165, 0, {})
        assert split.instances_per_class == {names[c]: n for c, n in per_class.items()}
        assert split.instances_per_class == {"date": 71, "fig": 41, "hazelnut": 53}
        assert split.max_instances == max(per_image.values())
        assert per_image[split.max_instances_image_id] == split.max_instances
        # 800x600 photos -> x4/3 at min_size 800.
        side = min(np.sqrt(a["bbox"][2] * a["bbox"][3]) for a in data["annotations"])
        assert split.sizes["min"] == pytest.approx(side * 4 / 3)
        assert split.frac_iou_below_half == 0.0
    assert r.warnings == [] and r.suggestion.keep_anchors and r.suggestion.min_size is None
    # docs/nuts_fit_report.txt is this report, as the CLI prints it.
    monkeypatch.chdir(ROOT)
    doc = (ROOT / "docs" / "nuts_fit_report.txt").read_text().splitlines()
    assert doc[0].startswith("$ python scripts/dataset_report.py --train tests/assets/nuts/annotations.json")
    assert "\n".join(doc[1:]) == format_report(compute_fit_report("tests/assets/nuts/annotations.json"))


def dense_small_json(path: Path, images: int = 4, per_image: int = 150) -> Path:
    """800x800 images (training scale 1) with 150 objects of 3..30 px (aspect 1:2..2:1) each."""
    rng = np.random.default_rng(0)
    anns = []
    for i in range(1, images + 1):
        side, aspect = rng.uniform(3, 30, per_image), rng.uniform(0.5, 2.0, per_image)
        w, h = side / np.sqrt(aspect), side * np.sqrt(aspect)
        x, y = rng.uniform(0, 800 - w), rng.uniform(0, 800 - h)
        # The box as a polygon: the report measures the mask (as training), the json checks want one.
        anns += [
            {
                "image_id": i,
                "category_id": int(c),
                "bbox": [float(a), float(b), float(c2), float(d)],
                "segmentation": [
                    [float(a), float(b), float(a + c2), float(b), float(a + c2), float(b + d), float(a), float(b + d)]
                ],
            }
            for a, b, c2, d, c in zip(x, y, w, h, rng.integers(1, 3, per_image), strict=True)
        ]
    return write_coco(path, [(i, 800, 800) for i in range(1, images + 1)], anns, {1: "cell", 2: "debris"})


def test_dense_small_objects_warn_and_suggest_smaller_anchors(tmp_path):
    r = compute_fit_report(
        dense_small_json(tmp_path / "dense.json"),
        min_size=800,
        max_size=1333,
        anchor_sizes=DEFAULT_ANCHORS,
        aspect_ratios=RATIOS,
        detections_per_img=100,
    )
    t = r.splits["train"]
    assert t.instances == 600 and t.max_instances == 150 and t.images_over_detections == 4
    assert 2 <= t.sizes["min"] and t.sizes["max"] <= 31  # mask boxes: the rasterised polygon, +-1 px per side
    assert t.frac_below_half_smallest > 0.4  # uniform 3..30: about (16 - 3) / 27
    small = next(w for w in r.warnings if "half the smallest anchor" in w.message)
    crowded = next(w for w in r.warnings if "detections_per_img" in w.message)
    assert crowded.override == "model.roi_heads.detections_per_img=200" and "150 instances" in crowded.message
    s = r.suggestion
    assert not s.keep_anchors and s.anchor_sizes[0][0] < 32 and s.anchor_sizes[-1][0] < 512
    assert small.override == "model.rpn.anchor_sizes='[" + ",".join(f"[{a[0]}]" for a in s.anchor_sizes) + "]'"
    assert s.frac_iou_below_half < t.frac_iou_below_half / 2
    assert s.min_size > 800 and s.p5_at_min_size > t.sizes["p5"]


def test_small_objects_on_downscaled_large_images_suggest_tiles_and_slicing(tmp_path):
    # 4000 x 3000 photos resized to 800 (x0.267): 20 px squares become 5.3 px, under 16 px
    anns = [{"image_id": 1, "category_id": 1, "bbox": [100.0 + 40 * k, 100.0, 20.0, 20.0]} for k in range(50)]
    path = write_coco(tmp_path / "large.json", [(1, 4000, 3000)], anns, {1: "speck"})
    r = compute_fit_report(path, min_size=800, max_size=1333, anchor_sizes=DEFAULT_ANCHORS, aspect_ratios=RATIOS)
    expected = (
        "images shrink x0.27 (p5 5.3 px, 20.0 px at native resolution): train on tiles and predict sliced, "
        "augmentation=tiles augmentation.tile_size=800 inference.slice.tile_size=800"
    )
    assert r.suggestion.slicing == expected
    assert f"  slicing: {expected}" in format_report(r).splitlines()
    # not when the images are not shrunk (the golden set: scale 1), nor when the objects fit
    assert compute_fit_report(NUTS, min_size=800, max_size=1333).suggestion.slicing == ""
    big = [{"image_id": 1, "category_id": 1, "bbox": [100.0 + 300 * k, 100.0, 200.0, 200.0]} for k in range(10)]
    path = write_coco(tmp_path / "big.json", [(1, 4000, 3000)], big, {1: "plate"})
    assert compute_fit_report(path, min_size=800, max_size=1333).suggestion.slicing == ""


def test_native_resolution_measures_objects_at_their_file_size(tmp_path):
    """``min_size=None`` (augmentation=tiles|none): the 20 px squares of a 4000 x 3000 photo stay
    20 px, the smallest anchor (32) keeps them above half its size, and no resize or slicing is
    suggested (the run already sees native resolution)."""
    anns = [{"image_id": 1, "category_id": 1, "bbox": [100.0 + 40 * k, 100.0, 20.0, 20.0]} for k in range(50)]
    path = write_coco(tmp_path / "large.json", [(1, 4000, 3000)], anns, {1: "speck"})
    r = compute_fit_report(path, min_size=None, anchor_sizes=DEFAULT_ANCHORS, aspect_ratios=RATIOS)
    t = r.splits["train"]
    assert t.sizes["p5"] == pytest.approx(20.0) and t.frac_below_half_smallest == 0.0
    assert t.image_scale == {"min": 1.0, "p50": 1.0, "max": 1.0}
    assert r.settings["min_size"] is None and r.settings["max_size"] is None
    assert r.suggestion.slicing == "" and r.suggestion.min_size is None
    assert "no resize to suggest" in r.suggestion.note
    text = format_report(r).splitlines()
    assert "Training scale: native resolution (tiles or no resize; objects at their file size)" in text
    resized = compute_fit_report(path, min_size=800, max_size=1333, anchor_sizes=DEFAULT_ANCHORS, aspect_ratios=RATIOS)
    assert resized.splits["train"].sizes["p5"] == pytest.approx(20.0 * 800 / 3000)


def test_bad_input_names_file_and_image(tmp_path):
    with pytest.raises(DatasetError, match="missing.json"):
        compute_fit_report(tmp_path / "missing.json")
    bad = tmp_path / "nosize.json"
    bad.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "width": 10, "height": 10}, {"id": 5, "file_name": "x.jpg"}],
                "annotations": [],
                "categories": [],
            }
        )
    )
    with pytest.raises(DatasetError, match=r"nosize.json: image 5 needs integer"):
        compute_fit_report(bad)
    dup = write_coco(tmp_path / "dup.json", [(3, 10, 10), (3, 10, 10)], [], {1: "a"})
    with pytest.raises(DatasetError, match="image id 3 appears more than once"):
        compute_fit_report(dup)
    anns = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, float("nan"), 5]},
        {"image_id": 1, "category_id": 1},  # no bbox
        {"image_id": 9, "category_id": 1, "bbox": [0, 0, 5, 5]},
        {"image_id": 1, "category_id": 4, "bbox": [0, 0, 5, 5]},
        {"image_id": 1, "category_id": 1, "bbox": [50, 0, 5, 5]},
        {"image_id": 1, "category_id": 1, "bbox": [8, 8, 5, 5]},
    ]  # the one valid box, clipped to 2x2
    some_bad = write_coco(tmp_path / "some_bad.json", [(1, 10, 10)], anns, {1: "a"})
    r = compute_fit_report(some_bad, min_size=10, max_size=10)
    t = r.splits["train"]
    # the reasons training's loader gives (the masks are the bboxes as rectangles)
    assert t.invalid == {
        "polygon has NaN / inf coordinates": 1,
        "missing segmentation (Mask R-CNN needs polygon or RLE masks)": 1,
        "unknown image_id": 1,
        "unknown category_id": 1,
        "polygon coordinates reach far outside the 10x10 image (x from 50 to 55, y from 0 to 5; "
        "at most one image size beyond an edge is accepted)": 1,
    }
    assert t.instances == 1 and t.sizes["max"] == pytest.approx(2.0)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "scripts/dataset_report.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_cli_end_to_end(tmp_path):
    out = tmp_path / "fit" / "dataset_fit.json"
    proc = run_cli("--train", str(NUTS), "--val", str(NUTS), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert any(line.split()[:4] == ["train", "18", "0", "165"] for line in lines)
    assert any(line.split() == ["date", "71", "71"] for line in lines) and "Warnings: none" in lines
    assert json.loads(out.read_text())["splits"]["val"]["instances_per_class"]["fig"] == 41

    dense = dense_small_json(tmp_path / "dense.json")
    proc = run_cli(
        "--train",
        str(dense),
        "--min-size",
        "800",
        "--max-size",
        "1333",
        "--anchor-sizes",
        "32",
        "64",
        "128",
        "256",
        "512",
        "--detections-per-img",
        "100",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fix: model.roi_heads.detections_per_img=200" in proc.stdout
    assert "fix: model.rpn.anchor_sizes='[[" in proc.stdout and "model.transform.min_size=" in proc.stdout
    native = run_cli("--train", str(dense), "--native")  # as a tiles run trains: no resize to suggest
    assert native.returncode == 0, native.stderr[-2000:]
    assert "Training scale: native resolution" in native.stdout and "model.transform.min_size=" not in native.stdout

    proc = run_cli("--train", str(tmp_path / "nope.json"))
    assert proc.returncode == 2 and "nope.json" in proc.stderr and "Traceback" not in proc.stderr
