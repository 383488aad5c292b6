"""MultiScaleRoIAlign: bilinear == torchvision, bicubic exact on linear images, level assignment."""

from collections import OrderedDict

import pytest
import torch
import torchvision
from torchvision.ops import roi_align

from maskrcnn.modeling.poolers import MultiScaleRoIAlign, roi_align_bicubic


def _random_boxes(n: int, size: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size * 0.8
    wh = torch.rand(n, 2, generator=g) * size * 0.6 + 1.0
    return torch.cat([xy, xy + wh], dim=1)


def _with_large(boxes: torch.Tensor) -> torch.Tensor:
    """Append boxes big enough for the coarsest level (sqrt(area) >= 448)."""
    return torch.cat([boxes, torch.tensor([[2.0, 3.0, 500.0, 490.0], [10.0, 0.0, 470.0, 505.0]])])


def _fpn_features(batch: int = 2, channels: int = 4, size: int = 128, seed: int = 0) -> OrderedDict:
    g = torch.Generator().manual_seed(seed)
    feats = OrderedDict()
    for i, stride in enumerate((4, 8, 16, 32)):
        feats[str(i)] = torch.randn(batch, channels, size // stride, size // stride, generator=g)
    feats["pool"] = torch.randn(batch, channels, size // 64, size // 64, generator=g)
    return feats


def _linear_image(height: int, width: int, channels: int = 3) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(float(height)), torch.arange(float(width)), indexing="ij")
    planes = [0.3 * xx - 0.7 * yy + 2.0, -1.1 * xx + 0.2 * yy, 0.5 * xx + 0.5 * yy - 3.0][:channels]
    return torch.stack(planes)[None]


@pytest.mark.parametrize("aligned", [True, False])
def test_single_level_bilinear_equals_roi_align(aligned):
    feats = OrderedDict([("0", torch.randn(2, 3, 20, 24))])
    boxes = [_random_boxes(7, 80, 1), _random_boxes(5, 80, 2)]
    pooler = MultiScaleRoIAlign(["0"], 5, sampling_ratio=2, aligned=aligned)
    out = pooler(feats, boxes, [(80, 96), (76, 90)])
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    expected = roi_align(feats["0"], rois, (5, 5), 0.25, 2, aligned)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("output_size,sampling_ratio", [(7, 2), (14, 2), (7, 0)])
def test_multiscale_equals_torchvision(output_size, sampling_ratio):
    feats = _fpn_features(size=512)
    # spread of box sizes so that every level 2..5 gets RoIs
    boxes = [_with_large(_random_boxes(40, 512, 3)), _random_boxes(30, 480, 4) * 0.3]
    image_sizes = [(512, 512), (480, 400)]
    assert set(torchvision.ops.poolers.LevelMapper(2, 5)(boxes).tolist()) == {0, 1, 2, 3}
    ours = MultiScaleRoIAlign(output_size=output_size, sampling_ratio=sampling_ratio, aligned=False)
    theirs = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], output_size, sampling_ratio)
    torch.testing.assert_close(ours(feats, boxes, image_sizes), theirs(feats, boxes, image_sizes), atol=1e-5, rtol=0)


def test_multiscale_aligned_uses_torchvision_levels():
    feats = _fpn_features(size=512, seed=5)
    boxes = [_with_large(_random_boxes(50, 512, 6)), _random_boxes(20, 512, 7) * 0.3]
    image_sizes = [(512, 512), (500, 512)]
    out = MultiScaleRoIAlign(output_size=7, sampling_ratio=2, aligned=True)(feats, boxes, image_sizes)
    levels = torchvision.ops.poolers.LevelMapper(2, 5)(boxes)
    assert set(levels.tolist()) == {0, 1, 2, 3}, "test boxes should cover several levels"
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    for level in range(4):
        idx = torch.where(levels == level)[0]
        expected = roi_align(feats[str(level)], rois[idx], (7, 7), 1.0 / 2 ** (level + 2), 2, aligned=True)
        torch.testing.assert_close(out[idx], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("aligned", [True, False])
def test_bicubic_exact_on_linear_image_interior(aligned):
    image = _linear_image(40, 48).repeat(2, 1, 1, 1)
    # RoIs (image pixels, scale 0.5) whose sampling taps stay >= 2 feature pixels inside the border
    rois = torch.tensor([[0, 8, 8, 60, 50], [1, 10.5, 12.3, 70.1, 55.2], [1, 20, 20, 21, 22], [0, 30, 14, 33, 60]])
    bicubic = roi_align_bicubic(image, rois, (7, 7), 0.5, 2, aligned)
    bilinear = roi_align(image, rois, (7, 7), 0.5, 2, aligned)  # bilinear is exact on linear images
    torch.testing.assert_close(bicubic, bilinear, atol=2e-5, rtol=0)


def test_bicubic_multiscale_exact_on_linear_features():
    feats = OrderedDict((str(i), _linear_image(128 // 2 ** (i + 2), 128 // 2 ** (i + 2))) for i in range(4))
    boxes = [torch.tensor([[30.0, 30, 90, 80], [40, 40, 56, 60], [20, 30, 100, 100]])]
    bicubic = MultiScaleRoIAlign(output_size=5, sampling_ratio=2, aligned=True, interpolation="bicubic")
    bilinear = MultiScaleRoIAlign(output_size=5, sampling_ratio=2, aligned=True)
    sizes = [(128, 128)]
    torch.testing.assert_close(bicubic(feats, boxes, sizes), bilinear(feats, boxes, sizes), atol=2e-5, rtol=0)


def test_bicubic_differs_from_bilinear_on_curved_image():
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(48.0), indexing="ij")
    image = (torch.sin(xx / 2.0) * torch.cos(yy / 3.0) + 0.01 * xx**2)[None, None]
    rois = torch.tensor([[0, 8.3, 8.1, 60.7, 50.2], [0, 20.2, 20.6, 40.1, 44.9]])
    bicubic = roi_align_bicubic(image, rois, (7, 7), 0.5, 2, True)
    bilinear = roi_align(image, rois, (7, 7), 0.5, 2, True)
    diff = (bicubic - bilinear).abs().max().item()
    assert 1e-3 < diff < 0.5  # different kernel, same sampling positions


def test_bicubic_border_and_outside_match_roi_align_rules():
    # constant image: any interpolation gives the constant; outside points count as zero
    image = torch.full((1, 1, 10, 10), 2.0)
    rois = torch.tensor([[0, -30.0, -30, -10, -10], [0, 0, 0, 10, 10], [0, -5, 0, 5, 10]])
    expected = roi_align(image, rois, (4, 4), 1.0, 2, True)
    torch.testing.assert_close(roi_align_bicubic(image, rois, (4, 4), 1.0, 2, True), expected, atol=1e-6, rtol=0)


def test_bicubic_gradients_flow():
    image = torch.randn(1, 2, 12, 12, requires_grad=True)
    out = roi_align_bicubic(image, torch.tensor([[0, 2.0, 2, 9, 10]]), (3, 3), 1.0, 2, True)
    out.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_no_state_and_empty_boxes():
    pooler = MultiScaleRoIAlign(output_size=7, interpolation="bicubic")
    assert len(pooler.state_dict()) == 0 and len(list(pooler.parameters())) == 0
    feats = _fpn_features(channels=3)
    empty = [torch.zeros(0, 4), torch.zeros(0, 4)]
    assert pooler(feats, empty, [(128, 128)] * 2).shape == (0, 3, 7, 7)
    assert MultiScaleRoIAlign(output_size=7)(feats, empty, [(128, 128)] * 2).shape == (0, 3, 7, 7)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="sampling_ratio"):
        MultiScaleRoIAlign(interpolation="bicubic", sampling_ratio=0)
    with pytest.raises(ValueError, match="interpolation"):
        MultiScaleRoIAlign(interpolation="nearest")
    with pytest.raises(KeyError, match="missing"):
        MultiScaleRoIAlign()(OrderedDict([("0", torch.zeros(1, 1, 8, 8))]), [torch.zeros(0, 4)], [(32, 32)])


def test_multiscale_rois_without_a_level_pool_to_zeros_like_torchvision():
    """The output is allocated without zero-filling (each RoI is written by its level); a box with
    no level (non-finite or inverted, so sqrt(area) is NaN) must still come out as zeros, as in
    torchvision's MultiScaleRoIAlign, not as whatever the memory held."""
    feats = _fpn_features(size=256)
    good = _random_boxes(6, 256, 5)
    bad = torch.tensor([[float("nan"), 3.0, 40.0, 50.0], [60.0, 60.0, 20.0, 90.0]])  # NaN; x2 < x1
    boxes = [torch.cat([good[:3], bad[:1]]), torch.cat([bad[1:], good[3:]])]
    image_sizes = [(256, 256), (256, 256)]
    for _ in range(3):  # fresh allocations each time: garbage would show up in one of them
        torch.empty(10, 4, 7, 7).fill_(123.0)
        out = MultiScaleRoIAlign(output_size=7, sampling_ratio=2)(feats, boxes, image_sizes)
        assert out.shape == (8, 4, 7, 7)
        assert torch.equal(out[3], torch.zeros(4, 7, 7)) and torch.equal(out[4], torch.zeros(4, 7, 7))
        keep = [0, 1, 2, 5, 6, 7]
        theirs = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(
            feats, [boxes[0][:3], boxes[1][1:]], image_sizes
        )
        torch.testing.assert_close(out[keep], theirs, atol=1e-5, rtol=0)
