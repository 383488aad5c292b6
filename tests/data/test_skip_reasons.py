"""Every skip reason is true of the annotation, the fit report and training keep the same instances by the
same rule (the box comes from the mask, never from the json bbox), and ``model.rpn.anchor_sizes=auto``
never claims a fit the report contradicts."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from helpers.config import compose
from maskrcnn.data.checks.setup import check_training_instances
from maskrcnn.data.coco import CocoInstanceDataset
from maskrcnn.data.fit.boxes import load_coco_boxes
from maskrcnn.data.fit.report_text import format_report
from maskrcnn.errors import DatasetError
from maskrcnn.training.auto_settings import resolve_auto_settings
from maskrcnn.training.run_summary import describe_config, fit_report

W, H = 40, 30
SQUARE = [5, 5, 25, 5, 25, 20, 5, 20]


def _write(path: Path, annotations: list[dict], images: int = 1) -> Path:
    coco = {
        "images": [{"id": i + 1, "file_name": f"{i}.png", "width": W, "height": H} for i in range(images)],
        "annotations": [
            {"id": k + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 1.0, **a}
            for k, a in enumerate(annotations)
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path.write_text(json.dumps(coco))
    return path


def _loader_and_report(path: Path, for_evaluation: bool = False) -> tuple[Counter, Counter, int, int]:
    """(loader's skip reasons, report's skip reasons, loader's instances, report's instances)."""
    dataset = CocoInstanceDataset(path.parent, path, for_evaluation=for_evaluation)
    report = load_coco_boxes(path)
    loader = Counter(s["reason"] for s in dataset.skipped if s["annotation_id"] is not None)
    return loader, Counter(report.invalid), dataset.num_instances(), int((~report.crowd).sum())


def test_degenerate_inside_is_not_called_outside_and_outside_is_not_called_degenerate(tmp_path):
    cases = {
        "degenerate polygon (zero area)": [[5, 5, 10, 10, 15, 15], [5, 5, 25, 5, 15, 5], [3, 3, 3, 3, 3, 3]],
        "polygon lies entirely outside the image": [[50, 5, 60, 5, 60, 15], [-20, -20, -5, -20, -5, -5]],
    }
    for for_evaluation in (False, True):
        for reason, polygons in cases.items():
            anns = [{"segmentation": [p], "bbox": [0, 0, 1, 1]} for p in polygons]
            path = _write(tmp_path / f"{for_evaluation}_{len(reason)}.json", anns)
            loader, report, _, _ = _loader_and_report(path, for_evaluation)
            assert sum(loader.values()) == len(polygons) and all(r.startswith(reason) for r in loader), loader
            assert loader == report


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    x=st.floats(0, W),
    y=st.floats(0, H),
    dx=st.floats(-10, 10),
    dy=st.floats(-10, 10),
    t=st.lists(st.floats(-1, 2), min_size=3, max_size=6),
)
def test_any_collinear_polygon_in_the_image_is_degenerate(tmp_path, x, y, dx, dy, t):
    polygon = [v for k in t for v in (x + k * dx, y + k * dy)]
    path = _write(tmp_path / "line.json", [{"segmentation": [polygon], "bbox": [0, 0, 1, 1]}])
    loader, report, _, _ = _loader_and_report(path)
    assert list(loader) in (["degenerate polygon (zero area)"], []), loader  # [] : rounding gave it an area
    assert loader == report


BBOXES = [[500, 500, 10, 10], [-1e6, 0, 5, 5], [5, 5, -10, 8], [0, 0, 0, 0], None, "box", [1, 2, 3], [1e308, 0, 1, 1]]


def test_a_valid_polygon_with_any_wrong_json_bbox_is_kept_by_training_and_the_report(tmp_path):
    anns = [{"segmentation": [SQUARE], "bbox": b} for b in BBOXES] + [{"segmentation": [SQUARE]}]
    path = _write(tmp_path / "boxes.json", anns)
    loader, report, instances, counted = _loader_and_report(path)
    assert loader == report == Counter() and instances == counted == len(anns)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    bbox=st.one_of(
        st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=4, max_size=4),
        st.lists(st.integers(-(10**6), 10**6), min_size=4, max_size=4),
        st.none(),
        st.text(max_size=3),
    ),
    polygon=st.sampled_from([SQUARE, [5, 5, 10, 10, 15, 15], [50, 5, 60, 5, 60, 15], [0, 0, 40, 0, 40, 30]]),
)
def test_training_and_the_report_count_the_same_instances_for_the_same_reasons(tmp_path, bbox, polygon):
    path = _write(
        tmp_path / "one.json", [{"segmentation": [polygon], "bbox": bbox}, {"segmentation": [SQUARE], "bbox": bbox}]
    )
    loader, report, instances, counted = _loader_and_report(path)
    assert loader == report and instances == counted


def test_a_validation_split_still_rejects_a_bbox_evaluation_cannot_read(tmp_path):
    path = _write(tmp_path / "val.json", [{"segmentation": [SQUARE], "bbox": "box"}])
    with pytest.raises(DatasetError, match="bbox 'box' must be a list of 4 numbers"):
        CocoInstanceDataset(tmp_path, path, for_evaluation=True)
    path = _write(tmp_path / "val_far.json", [{"segmentation": [SQUARE], "bbox": [500, 500, 10, 10]}])
    assert CocoInstanceDataset(tmp_path, path, for_evaluation=True).num_instances() == 1  # evaluation reads it


@pytest.mark.parametrize("images", [1, 4])
def test_keep_empty_false_without_annotations_counts_the_images_of_the_file(tmp_path, images):
    path = _write(tmp_path / "empty.json", [], images=images)
    dataset = CocoInstanceDataset(tmp_path, path, keep_empty=False)
    with pytest.raises(DatasetError, match=rf"the file has {images} image\(s\) but no annotations"):
        check_training_instances(dataset)


def _auto(tmp_path: Path, side: float | list[float], caplog) -> tuple[str, str]:
    """Resolve anchor_sizes=auto on 64x64 images with one side x side object each (a list: one
    side per image): (log, report text)."""
    sides = side if isinstance(side, list) else [side] * 8

    def square(s: float) -> list[float]:
        return [10, 10, 10 + s, 10, 10 + s, 10 + s, 10, 10 + s]

    coco = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 64} for i in range(1, len(sides) + 1)],
        "annotations": [
            {
                "id": i,
                "image_id": i,
                "category_id": 1,
                "segmentation": [square(s)],
                "iscrowd": 0,
                "bbox": [10, 10, s, s],
                "area": s * s,
            }
            for i, s in enumerate(sides, start=1)
        ],
        "categories": [{"id": 1, "name": "dot"}],
    }
    ann = tmp_path / f"sides{'_'.join(map(str, sides))}.json"
    ann.write_text(json.dumps(coco))
    cfg = compose(
        [
            "model=resnet18_fpn",
            "model.rpn.anchor_sizes=auto",
            "data.num_classes=1",
            "model.transform.min_size=64",
            "model.transform.max_size=64",
            f"data.train.annotation_file={ann}",
        ],
        output_dir=tmp_path,
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="maskrcnn.training.auto_settings"):
        resolve_auto_settings(cfg, SimpleNamespace(train_spec={"annotation_file": str(ann)}))
    settings_ = describe_config(cfg)
    anchors = OmegaConf.to_container(cfg.model.rpn.anchor_sizes)
    report = format_report(fit_report(settings_, ann, anchor_sizes=anchors))
    return " ".join(r.getMessage() for r in caplog.records if "anchor_sizes=auto ->" in r.getMessage()), report


@pytest.mark.parametrize("side", [1, 2, 4])
def test_auto_anchors_on_tiny_objects_never_claim_a_fit(tmp_path, caplog, side):
    message, report = _auto(tmp_path, side, caplog)
    assert " fit (" not in message and ("no anchor set fits" in message or "do not fit" in message), message
    assert "IoU<0.5 100.0%" in message and "100.0%" in report
    assert any(r.levelname == "WARNING" for r in caplog.records)


def test_auto_anchors_fitted_to_objects_they_still_miss_say_so_in_one_sentence(tmp_path, caplog):
    # five 1-px dots and three objects a doubling set fits: the set is chosen, yet 62.5 % miss it
    message, _ = _auto(tmp_path, [1, 1, 1, 1, 1, 8, 16, 32], caplog)
    assert "-> [[8], [16], [32], [64], [128]]; fitted to the training objects, but even these do not fit" in message
    assert "(IoU<0.5 62.5%" in message and message.count(" but ") == 1, message
    assert any(r.levelname == "WARNING" for r in caplog.records)


def test_auto_anchors_on_objects_the_standard_set_fits_say_so_with_the_reports_numbers(tmp_path, caplog):
    message, report = _auto(tmp_path, 40, caplog)
    assert "the standard anchors fit (IoU<0.5 0.0%" in message and "no anchor set fits" not in report
