"""Merging detections across passes (``maskrcnn.inference.tile_merge``): golden window IoUs, which
detections join a group, and the union mask a group gets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskrcnn.inference.tile_merge import PassDetections, merge_detections, window_iou
from maskrcnn.modeling.mask_crops import MaskCrop


def _rect(x0: int, y0: int, x1: int, y1: int, pad: int = 0) -> MaskCrop:
    """A rectangle of pixels x0..x1-1, y0..y1-1 held in a crop ``pad`` pixels larger."""
    mask = np.zeros((y1 - y0 + 2 * pad, x1 - x0 + 2 * pad), dtype=bool)
    mask[pad : pad + y1 - y0, pad : pad + x1 - x0] = True
    return MaskCrop(y0 - pad, x0 - pad, mask)


def _pass(window, rects, labels=None, scores=None, coarse=False) -> PassDetections:
    n = len(rects)
    return PassDetections(
        window=window,
        boxes=torch.tensor([list(map(float, r)) for r in rects], dtype=torch.float32).reshape(n, 4),
        labels=torch.tensor(labels or [1] * n, dtype=torch.int64),
        scores=torch.tensor(scores or [0.9] * n, dtype=torch.float32),
        crops=[_rect(*r, pad=1) for r in rects],
        coarse=coarse,
    )


def test_window_iou_counts_only_the_pixels_inside_the_window():
    a, b = _rect(0, 0, 10, 10), _rect(5, 0, 15, 10)
    assert window_iou(a, b, (0, 0, 20, 10)) == 50 / 150
    assert window_iou(a, b, (5, 0, 10, 10)) == 1.0  # where both looked they agree
    assert window_iou(a, b, (0, 0, 5, 10)) == 0.0  # b has no pixel there
    assert window_iou(a, _rect(30, 30, 40, 40), (0, 0, 50, 50)) == 0.0


def test_detections_of_one_pass_are_never_merged_and_other_classes_stay_apart():
    same_pass = _pass((0, 0, 100, 100), [(10, 10, 30, 30), (12, 12, 30, 30)], scores=[0.9, 0.8])
    merged = merge_detections([same_pass], 0.5, 100)
    assert merged.boxes.tolist() == [[10, 10, 30, 30], [12, 12, 30, 30]] and merged.scores.tolist() == pytest.approx(
        [0.9, 0.8]
    )
    other_class = _pass((0, 0, 100, 100), [(10, 10, 30, 30)], labels=[2], scores=[0.95])
    merged = merge_detections([same_pass, other_class], 0.5, 100)
    assert merged.labels.tolist() == [2, 1, 1]


def test_a_group_takes_the_best_score_the_union_box_and_the_union_mask():
    # an object x 60..150 cut by two tiles (windows 0..100 and 80..200): each sees a part
    left = _pass((0, 0, 100, 100), [(60, 20, 100, 40)], scores=[0.7])
    right = _pass((80, 0, 200, 100), [(80, 20, 150, 40)], scores=[0.8])
    stray = _pass((80, 0, 200, 100), [(160, 60, 170, 70)], scores=[0.95])  # elsewhere: its own group
    merged = merge_detections([left, right, stray], 0.5, 100)
    assert merged.boxes.tolist() == [[160, 60, 170, 70], [60, 20, 150, 40]]
    assert merged.scores.tolist() == pytest.approx([0.95, 0.8])  # the best member's
    crop = merged.crops[1]
    full = np.zeros((100, 200), dtype=bool)
    full[crop.top : crop.bottom, crop.left : crop.right] = crop.mask
    expected = np.zeros((100, 200), dtype=bool)
    expected[20:40, 60:150] = True
    assert (full == expected).all()
    assert len(merge_detections([left, right, stray], 0.5, 1).scores) == 1  # detections_per_img


def test_a_coarse_pass_fills_the_mask_only_outside_the_fine_windows_that_joined():
    tile = _pass((0, 0, 100, 100), [(50, 10, 100, 20)])  # the tile sees the object up to its border
    whole = _pass((0, 0, 200, 100), [(48, 9, 150, 21)], coarse=True)  # blurrier, but whole
    merged = merge_detections([tile, whole], 0.5, 100)
    assert len(merged.scores) == 1 and merged.boxes.tolist() == [[48, 9, 150, 21]]
    crop = merged.crops[0]
    full = np.zeros((100, 200), dtype=bool)
    full[crop.top : crop.bottom, crop.left : crop.right] = crop.mask
    expected = np.zeros((100, 200), dtype=bool)
    expected[10:20, 50:100] = True  # inside the tile: the tile's mask
    expected[9:21, 100:150] = True  # outside it: the full-image pass's
    assert (full == expected).all()


def test_nothing_to_merge():
    merged = merge_detections([], 0.5, 100)
    assert merged.boxes.shape == (0, 4) and merged.labels.shape == (0,) and merged.crops == []
