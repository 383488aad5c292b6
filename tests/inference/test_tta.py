"""Test-time augmentation (maskrcnn.inference.tta): the merge on hand-made detections, the flip
mapping of boxes and masks, and that one plain view is exactly the network's own output."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from helpers.tiny_model import build_tiny_model
from maskrcnn.inference.optimize.fast_inference import optimize_for_inference
from maskrcnn.inference.tta import TestTimeAugmentation, TTAView, average_masks, flip_boxes, merge_detections
from maskrcnn.inference.tta_options import TTASettings, build_tta
from maskrcnn.modeling.postprocess import paste_masks


def _images() -> list[torch.Tensor]:
    """Two noise images of different sizes (Tensor[3, H, W] in [0, 1]) on which the tiny model finds dozens."""
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 80, 112, generator=g), torch.rand(3, 96, 72, generator=g)]


def _rows(det: dict) -> list[tuple]:
    """(box, score, label) per detection, as Python values."""
    return list(zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist(), strict=True))


def _run(fn, images):
    with torch.no_grad():
        return fn(images)


def test_merge_keeps_the_best_box_of_each_class_and_cluster():
    # two views' detections of one image, concatenated: view A rows 0-1, view B rows 2-4
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # A, class 1, 0.9
            [20.0, 20.0, 30.0, 30.0],  # A, class 2, 0.6
            [1.0, 0.0, 11.0, 10.0],  # B, class 1, 0.8: IoU 90/110 = 0.82 with row 0 -> suppressed
            [20.0, 20.0, 30.0, 30.0],  # B, class 1, 0.7: the same box as row 1 but another class -> kept
            [4.0, 0.0, 14.0, 10.0],  # B, class 1, 0.3: IoU 60/140 = 0.43 with row 0 -> kept
        ]
    )
    scores = torch.tensor([0.9, 0.6, 0.8, 0.7, 0.3])
    labels = torch.tensor([1, 2, 1, 1, 1])
    assert merge_detections(boxes, scores, labels, 0.5, 100).tolist() == [0, 3, 1, 4]
    assert merge_detections(boxes, scores, labels, 0.5, 3).tolist() == [0, 3, 1]  # detections_per_img
    assert merge_detections(boxes, scores, labels, 0.4, 100).tolist() == [0, 3, 1]  # 0.43 > 0.4: row 4 goes too
    empty = torch.zeros((0, 4))
    assert merge_detections(empty, torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5, 100).tolist() == []


def test_flip_boxes_mirrors_and_is_its_own_inverse():
    boxes = torch.tensor([[2.0, 3.0, 10.5, 7.0], [0.0, 0.0, 40.0, 5.0]])
    assert flip_boxes(boxes, 40).tolist() == [[29.5, 3.0, 38.0, 7.0], [0.0, 0.0, 40.0, 5.0]]
    assert torch.equal(flip_boxes(flip_boxes(boxes, 40), 40), boxes)


def test_average_masks_unflips_each_view_then_averages():
    a = torch.tensor([[[[0.0, 1.0], [0.2, 0.4]]]])  # [1, 1, 2, 2]
    b = torch.tensor([[[[0.6, 0.0], [1.0, 0.0]]]])  # a flipped view: mirrored, [[0, 0.6], [0, 1]] unflipped
    assert torch.allclose(average_masks([a, b], [False, True]), torch.tensor([[[[0.0, 0.8], [0.1, 0.7]]]]))
    assert torch.equal(average_masks([a], [False]), a)


@pytest.mark.parametrize("aligned", [False, True])
def test_averaging_box_masks_equals_averaging_the_pasted_probability_maps(aligned):
    """Why TTA averages M x M masks: every view's mask belongs to the same box, and pasting is linear."""
    g = torch.Generator().manual_seed(0)
    views = [torch.rand(3, 1, 28, 28, generator=g) for _ in range(4)]
    boxes = torch.tensor([[3.0, 4.5, 30.2, 20.0], [10.0, 1.0, 12.5, 39.0], [-5.0, 20.0, 60.0, 44.0]])
    pasted = [paste_masks(m, boxes, (40, 50), aligned=aligned) for m in views]
    mean_of_pasted = torch.stack(pasted).mean(dim=0)
    pasted_mean = paste_masks(average_masks(views, [False] * 4), boxes, (40, 50), aligned=aligned)
    assert torch.allclose(pasted_mean, mean_of_pasted, atol=1e-6)


@pytest.mark.parametrize("copy", ["eager", "fast"])
def test_one_plain_view_gives_exactly_the_networks_detections(copy):
    net = build_tiny_model()
    if copy == "fast":
        net = optimize_for_inference(net)
    images = _images()
    tta = TestTimeAugmentation(net, [TTAView(96, 128)])  # the tiny model's own sizes, not flipped
    assert tta.views == [tta.plain]
    plain, merged = _run(net, images)["detections"], _run(tta, images)
    for p, m in zip(plain, merged, strict=True):
        assert p["boxes"].shape[0] > 5
        for key in ("boxes", "labels", "scores", "masks"):
            assert torch.equal(m[key], p[key]), key


def test_a_flipped_view_of_a_mirror_symmetric_image_gives_the_mirrored_detections():
    """The flipped image equals the image, so the network sees the same tensor: the flipped view's
    results, mapped back, must be the plain ones mirrored (boxes bit for bit, masks to rounding)."""
    net = build_tiny_model()
    net.paste_aligned = True  # the exact paste geometry; the legacy one snaps boxes to integers
    left = torch.rand(3, 80, 56, generator=torch.Generator().manual_seed(1))
    image = torch.cat([left, left.flip(-1)], dim=-1)  # Tensor[3, 80, 112], symmetric
    plain = _run(net, [image])["detections"][0]
    flipped = _run(TestTimeAugmentation(net, [TTAView(96, 128, flip=True)]), [image])[0]
    assert plain["boxes"].shape[0] > 5
    assert torch.equal(flipped["boxes"], flip_boxes(plain["boxes"], 112))
    assert torch.equal(flipped["labels"], plain["labels"]) and torch.equal(flipped["scores"], plain["scores"])
    assert torch.allclose(flipped["masks"], plain["masks"].flip(-1), atol=1e-5)


def test_a_repeated_view_changes_nothing():
    """The second copy's detections are duplicates (IoU 1) that the merge drops, and its masks of
    the kept boxes, predicted again from its own features, equal the first copy's."""
    net = build_tiny_model()
    images = _images()
    plain = _run(net, images)["detections"]
    twice = _run(TestTimeAugmentation(net, [TTAView(96, 128), TTAView(96, 128)]), images)
    for p, t in zip(plain, twice, strict=True):
        for key in ("boxes", "labels", "scores"):
            assert torch.equal(t[key], p[key]), key
        assert torch.allclose(t["masks"], p["masks"], atol=1e-5)


def test_flip_and_scales_merge_the_views_detections_and_time_them():
    """Every merged detection is one view's, mapped back to the image; no class keeps two boxes
    overlapping by more than nms_thresh; the cost line names the views."""
    net = build_tiny_model()
    image = _images()[0]
    views = TTASettings(flip=True, scales=(0.75, 1.0)).views(96, 128)
    assert views == [TTAView(72, 96), TTAView(72, 96, True), TTAView(96, 128), TTAView(96, 128, True)]
    tta = build_tta(TTASettings(flip=True, scales=(0.75, 1.0)), net)
    assert tta is not None and tta.views == views
    merged = _run(tta.detect, [image])[0]
    candidates = [_rows(_run(TestTimeAugmentation(net, [view]).detect, [image])[0]) for view in views]
    kept = _rows(merged)
    assert 0 < len(kept) <= net.roi_heads.detections_per_img
    assert all(any(k in rows for rows in candidates) for k in kept)
    assert merged["scores"].tolist() == sorted(merged["scores"].tolist(), reverse=True)
    assert merged["masks"].shape == (len(kept), 1, 28, 28)
    for label in merged["labels"].unique():
        same = merged["boxes"][merged["labels"] == label]
        iou = box_iou(same, same).fill_diagonal_(0)
        assert float(iou.max()) <= net.roi_heads.nms_thresh
    line = tta.cost.line()
    assert line.startswith("TTA: 4 views per image (72 px, 72 px flipped, 96 px, 96 px flipped), ")
    assert line.endswith("x the time without TTA (1 image)")


def test_a_call_in_rle_gives_the_thresholded_probability_masks_of_a_call_in_the_nets_format():
    """Validation and eval ask TTA for RLE (one mask pasted at a time), as they ask the network."""
    from pycocotools import mask as mask_utils

    net = build_tiny_model()
    tta = build_tta(TTASettings(flip=True, scales=(0.75, 1.0)), net)
    assert tta is not None and net.mask_format == "prob"
    images = _images()
    with torch.no_grad():
        prob, rle = tta(images), tta(images, mask_format="rle")
    assert sum(len(d["scores"]) for d in prob) > 0
    for p, r in zip(prob, rle, strict=True):
        assert _rows(p) == _rows(r) and isinstance(r["masks"], list) and len(r["masks"]) == len(p["scores"])
        decoded = torch.from_numpy(mask_utils.decode(r["masks"])).permute(2, 0, 1)[:, None].bool()
        assert torch.equal(decoded, p["masks"] > 0.5)


def test_settings_give_the_views_and_the_plain_settings_no_wrapper():
    assert TTASettings(flip=True, scales=(0.8, 1.0, 1.2)).views(128, 160) == [
        TTAView(102, 128),
        TTAView(102, 128, True),
        TTAView(128, 160),
        TTAView(128, 160, True),
        TTAView(154, 192),
        TTAView(154, 192, True),
    ]
    # absolute sizes replace the factors; max_size caps every view
    assert TTASettings(scales=(2.0,), min_sizes=(600, 800), max_size=1000).views(128, 160) == [
        TTAView(600, 1000),
        TTAView(800, 1000),
    ]
    assert TTASettings(scales=(1.0, 1.001)).views(128, 160) == [TTAView(128, 160)]  # equal views run once
    net = build_tiny_model()
    assert build_tta(TTASettings(), net) is None
    assert build_tta(TTASettings(min_sizes=(96,)), net) is None  # the model's own size: no TTA either
