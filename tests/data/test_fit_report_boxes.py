"""The fit report, anchor choice and extents measure the boxes training uses: from the masks.

Annotations without ``bbox`` are measured from their segmentation (polygon, compressed and
uncompressed RLE alike, exactly as training rasterises them); a json bbox that disagrees with its
mask is warned about with ids and not used; the json bbox is the fallback only without a usable
segmentation; a validation split without ``bbox`` is rejected with a message saying why.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from helpers.config import ROOT
from maskrcnn.data.checks.annotation_file import validate_coco
from maskrcnn.data.fit.boxes import load_coco_boxes, segmentation_boxes
from maskrcnn.data.fit.report import compute_fit_report
from maskrcnn.data.fit.report_text import format_report
from maskrcnn.data.readers.masks import decode_segmentation, masks_to_boxes
from maskrcnn.errors import DatasetError

STANDARD = [[32], [64], [128], [256], [512]]  # what model.rpn.anchor_sizes=auto starts from


def square(x: float, y: float, s: float) -> list[list[float]]:
    return [[x, y, x + s, y, x + s, y + s, x, y + s]]


def objects(n: int = 100, seed: int = 0) -> list[dict]:
    """n polygon squares of side 8..20 px on 200x200 images (5 per image), with their true bbox."""
    rng = np.random.default_rng(seed)
    anns = []
    for k in range(n):
        s = float(rng.integers(8, 21))
        x, y = (float(v) for v in rng.integers(0, 180, 2))
        anns.append(
            {
                "id": k + 1,
                "image_id": k // 5 + 1,
                "category_id": 1 + k % 2,
                "iscrowd": 0,
                "segmentation": square(x, y, s),
                "bbox": [x, y, s, s],
                "area": s * s,
            }
        )
    return anns


def write(path: Path, anns: list[dict], images: int = 20, size: tuple[int, int] = (200, 200)) -> Path:
    data = {
        "images": [
            {"id": i, "file_name": f"{i}.png", "width": size[0], "height": size[1]} for i in range(1, images + 1)
        ],
        "annotations": anns,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    path.write_text(json.dumps(data))
    return path


def report(path: Path, **kwargs):
    return compute_fit_report(path, min_size=200, max_size=200, anchor_sizes=STANDARD, **kwargs)


def test_bbox_less_annotations_are_measured_from_their_masks(tmp_path):
    anns = objects()
    clean = report(write(tmp_path / "clean.json", anns))
    for a in anns:
        a.pop("bbox"), a.pop("area")
    r = report(write(tmp_path / "nobbox.json", anns))
    t = r.splits["train"]
    assert (t.instances, t.invalid) == (100, {})
    assert t.instances_per_class == {"a": 50, "b": 50} and not any("fewer than" in w.message for w in r.warnings)
    assert t.sizes == clean.splits["train"].sizes and 8 <= t.sizes["min"] and t.sizes["max"] <= 20
    s = r.suggestion  # objects of 8..20 px: the standard set misses them, a smaller one is suggested
    assert s.anchor_sizes is not None and not s.keep_anchors and s.anchor_sizes[0][0] < 32
    assert s.anchor_sizes == clean.suggestion.anchor_sizes and "nothing to suggest" not in s.note
    assert "boxes:" not in format_report(r)  # every box from its mask: the usual case prints nothing extra


def test_disagreeing_bbox_is_warned_with_ids_and_not_used(tmp_path):
    anns = objects(102)
    clean = report(write(tmp_path / "clean.json", [dict(a) for a in anns], images=21))
    for k in (7, 50):  # a 10x10 bbox on an 8..20 px square somewhere else in the image
        anns[k]["segmentation"] = square(120, 120, 60)
        anns[k]["bbox"] = [0, 0, 10, 10]
    anns[3]["bbox"] = [anns[3]["bbox"][0] + 1, anns[3]["bbox"][1], anns[3]["bbox"][2], anns[3]["bbox"][3] + 1]
    r = report(write(tmp_path / "wrong.json", anns, images=21))
    t = r.splits["train"]
    assert t.bbox_disagree == 2 and [e["annotation_id"] for e in t.bbox_disagree_examples] == [8, 51]
    assert t.bbox_disagree_examples[0]["bbox"] == [0, 0, 10, 10]
    assert t.bbox_disagree_examples[0]["mask_box"] == [120.0, 120.0, 60.0, 60.0]
    warning = next(w for w in r.warnings if "disagrees" in w.message)
    assert "wrong.json" in warning.message and "2 annotation(s)" in warning.message
    assert "annotation 8 (image 2)" in warning.message and "annotation 51 (image 11)" in warning.message
    assert t.sizes["max"] == pytest.approx(60.0) and t.instances == 102  # the masks are used, nothing dropped
    assert clean.splits["train"].bbox_disagree == 0 and "boxes:" in format_report(r)


def shapes() -> dict[str, object]:
    """One 9x5 px object at (4, 3) of a 30x20 image in each encoding."""
    mask = np.zeros((20, 30), np.uint8, order="F")
    mask[3:8, 4:13] = 1
    compressed = mask_utils.encode(mask)
    runs, flat, value, count = [], mask.ravel(order="F"), 0, 0
    for v in flat:
        if v != value:
            runs.append(count)
            value, count = v, 0
        count += 1
    runs.append(count)
    return {
        "polygon": [[4, 3, 13, 3, 13, 8, 4, 8]],
        "compressed RLE": {"size": [20, 30], "counts": compressed["counts"].decode()},
        "uncompressed RLE": {"size": [20, 30], "counts": [int(c) for c in runs]},
    }


def test_polygon_and_rle_are_measured_alike(tmp_path):
    segs = shapes()
    anns = [
        {"id": k + 1, "image_id": 1, "category_id": 1, "segmentation": seg, "bbox": [0, 0, 2, 2]}
        for k, seg in enumerate(segs.values())
    ]
    # without a usable segmentation training skips an annotation whatever its bbox: so does the report,
    # with the reason training's loader gives
    anns.append({"id": 9, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 4]})
    anns.append({"id": 10, "image_id": 1, "category_id": 1, "segmentation": [[40, 30, 50, 30, 50, 40]]})
    anns.append({"id": 11, "image_id": 1, "category_id": 1, "segmentation": []})
    boxes = load_coco_boxes(write(tmp_path / "mixed.json", anns, images=1, size=(30, 20)))
    assert boxes.wh.tolist() == [[9, 5]] * 3
    assert boxes.invalid == {
        "missing segmentation (Mask R-CNN needs polygon or RLE masks)": 1,
        "polygon lies entirely outside the image (zero area after clipping)": 1,
        "empty polygon list": 1,
    }
    assert [e["annotation_id"] for e in boxes.invalid_examples] == [9, 10, 11]
    assert boxes.disagree == 3
    for seg in segs.values():  # the same box as the training target of each
        mask = decode_segmentation(seg, 20, 30)
        assert masks_to_boxes(mask[None]).tolist() == [[4, 3, 13, 8]]
    r = compute_fit_report(tmp_path / "mixed.json", min_size=20, max_size=30)
    assert r.splits["train"].instances == 3 and sum(r.splits["train"].invalid.values()) == 3
    # validation's extents (the augmentation memory check) read the RLE's mask, not its 2x2 bbox
    index = validate_coco(json.loads((tmp_path / "mixed.json").read_text()), "mixed.json")
    assert index.extents == {1: 5.0}


@st.composite
def polygons(draw):
    """1-2 convex-ish parts with fractional vertices, some reaching past the 40x30 image's edges."""
    parts = []
    for _ in range(draw(st.integers(1, 2))):
        cx, cy = draw(st.floats(-5, 45)), draw(st.floats(-5, 35))
        r, n = draw(st.floats(0.4, 15)), draw(st.integers(3, 8))
        angles = sorted(draw(st.lists(st.floats(0, 6.28), min_size=n, max_size=n)))
        parts.append([v for a in angles for v in (cx + r * np.cos(a), cy + r * np.sin(a))])
    return parts


@settings(
    max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(segs=st.lists(polygons(), min_size=1, max_size=6))
def test_polygon_boxes_are_the_training_targets(segs):
    anns = [{"segmentation": s} for s in segs]
    n = len(anns)
    boxes, problems = segmentation_boxes(anns, np.full(n, 40), np.full(n, 30), np.ones(n, bool))
    for i, seg in enumerate(segs):
        if i in problems:  # validation skips it too (degenerate, outside the image)
            continue
        expected = masks_to_boxes(decode_segmentation(seg, 30, 40)[None])[0]
        assert boxes[i].tolist() == expected.tolist()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "scripts/dataset_report.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_cli_on_bbox_less_train_and_val(tmp_path):
    anns = objects()
    for a in anns:
        a.pop("bbox"), a.pop("area")
    path = write(tmp_path / "nobbox.json", anns)
    proc = run_cli("--train", str(path), "--min-size", "150", "--max-size", "200")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any(line.split()[:4] == ["train", "20", "0", "100"] for line in proc.stdout.splitlines())
    assert "nothing to suggest" not in proc.stdout and "fewer than 10" not in proc.stdout
    assert "anchors: model.rpn.anchor_sizes='[[" in proc.stdout
    # COCO evaluation reads the ground-truth bbox: a val split without it is rejected, saying so
    proc = run_cli("--train", str(path), "--val", str(path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "nobbox.json: annotation id 1 (image id 1): COCO evaluation" in proc.stderr
    assert "missing key(s) ['bbox', 'area']" in proc.stderr and "toBbox" in proc.stderr


def test_validation_split_without_bbox_is_rejected(tmp_path):
    data = json.loads(
        write(
            tmp_path / "v.json", [{k: v for k, v in a.items() if k != "bbox"} for a in objects(5)], images=1
        ).read_text()
    )
    with pytest.raises(DatasetError, match=r"v\.json: annotation id 1 \(image id 1\): COCO evaluation .*\['bbox'\]"):
        validate_coco(data, str(tmp_path / "v.json"), for_evaluation=True)
    assert validate_coco(data, "v.json").instances[1]  # training itself does not need it
