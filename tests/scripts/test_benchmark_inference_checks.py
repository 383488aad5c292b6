"""The inference benchmark's measuring tools (scripts/bench/inference.py,
trained_like_weights.py): detections compared as sets, and predictors calibrated to the output
spread of a trained model."""

from __future__ import annotations

import math

import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

from bench.inference import compare_detections
from bench.trained_like_weights import OUTPUT_STD, calibrate_predictors, trained_like_state


def _detections(boxes: list[list[float]], labels: list[int], scores: list[float]) -> dict:
    n = len(boxes)
    masks = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 4, 4) / 10
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).view(n, 4),
        "labels": torch.tensor(labels),
        "scores": torch.tensor(scores),
        "masks": masks.clone(),
    }


def test_tied_detections_in_another_order_are_equal():
    a = _detections([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 3, 3]], [1, 1, 2], [1.0, 1.0, 0.5])
    order = torch.tensor([1, 0, 2])  # the two tied detections swapped
    b = {key: value[order] for key, value in a.items()}
    assert compare_detections(b, a) == {"labels_equal": True, "boxes": 0.0, "scores": 0.0, "masks": 0.0}


def test_a_moved_box_a_new_label_and_a_missing_detection_are_reported():
    a = _detections([[0, 0, 10, 10], [5, 5, 20, 20]], [1, 2], [0.9, 0.8])
    moved = _detections([[0, 0, 10, 10.25], [5, 5, 20, 20]], [1, 2], [0.9, 0.7])
    result = compare_detections(moved, a)
    assert result["labels_equal"] and result["boxes"] == 0.25 and math.isclose(result["scores"], 0.1, abs_tol=1e-6)
    relabelled = _detections([[0, 0, 10, 10], [5, 5, 20, 20]], [1, 3], [0.9, 0.8])
    assert not compare_detections(relabelled, a)["labels_equal"]
    assert math.isinf(compare_detections(relabelled, a)["boxes"])
    fewer = _detections([[0, 0, 10, 10]], [1], [0.9])
    result = compare_detections(fewer, a)
    assert not result["labels_equal"] and math.isnan(result["boxes"])
    empty = _detections([], [], [])
    assert compare_detections(empty, empty)["labels_equal"]


def test_calibrated_predictors_have_the_target_output_spread():
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=96, max_size=96)
    model.load_state_dict(trained_like_state(model.state_dict(), seed=0))
    image = torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(0))
    calibrate_predictors(model, image)
    assert not model.training and model.roi_heads.score_thresh == 0.05  # restored
    model.roi_heads.score_thresh = 0.0  # measure as calibrated: the mask head sees every detection
    outputs: dict[str, list[torch.Tensor]] = {path: [] for path in OUTPUT_STD}
    for path in OUTPUT_STD:
        layer = model.get_submodule(path)
        assert torch.count_nonzero(layer.bias) == 0
        layer.register_forward_hook(lambda _m, _i, out, path=path: outputs[path].append(out.flatten()))
    with torch.no_grad():
        detections = model([image])[0]
    assert detections["boxes"].shape[0] > 0
    for path, target in OUTPUT_STD.items():
        std = float(torch.cat(outputs[path]).std())
        assert math.isclose(std, target, rel_tol=1e-3), (path, std, target)
