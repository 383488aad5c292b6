"""The inference copy's FPN (upsample + add fused) gives torchvision's FPN outputs exactly."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from maskrcnn.inference.optimize.fused_fpn import FusedTopDownFPN, _add_top_down, fuse_fpn_top_down
from maskrcnn.inference.optimize.module_swap import swap_exact_type


def _features(sizes, channels=(8, 16, 32, 64), seed=0, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    feats = OrderedDict()
    for i, ((h, w), c) in enumerate(zip(sizes, channels, strict=True)):
        f = torch.randn(2, c, h, w, generator=g)
        feats[str(i)] = f.to(memory_format=torch.channels_last) if channels_last else f
    return feats


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    "sizes",
    [
        [(32, 40), (16, 20), (8, 10), (4, 5)],  # exact 2x steps: fused in place
        [(33, 41), (17, 21), (9, 11), (5, 6)],  # odd sizes: nearest interpolation is not 2x, plain path
    ],
)
def test_fused_fpn_equals_torchvision(sizes, channels_last):
    torch.manual_seed(0)
    fpn = FeaturePyramidNetwork([8, 16, 32, 64], 24, extra_blocks=LastLevelMaxPool()).eval()
    fused = FeaturePyramidNetwork([8, 16, 32, 64], 24, extra_blocks=LastLevelMaxPool()).eval()
    fused.load_state_dict(fpn.state_dict())
    if channels_last:
        fpn.to(memory_format=torch.channels_last)
        fused.to(memory_format=torch.channels_last)
    assert fuse_fpn_top_down(fused) == 1 and type(fused) is FusedTopDownFPN
    feats = _features(sizes, channels_last=channels_last)
    with torch.no_grad():
        expected, got = fpn(feats), fused(feats)
    assert list(got) == list(expected) == ["0", "1", "2", "3", "pool"]
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert fused.state_dict().keys() == fpn.state_dict().keys()


def test_top_down_add_is_in_place_only_without_gradients():
    lateral, coarser = torch.randn(1, 3, 8, 6), torch.randn(1, 3, 4, 3)
    expected = lateral + torch.nn.functional.interpolate(coarser, size=(8, 6), mode="nearest")
    with torch.no_grad():
        inplace = lateral.clone()
        assert _add_top_down(inplace, coarser).data_ptr() == inplace.data_ptr()
        assert torch.equal(inplace, expected)
    grad_lateral = lateral.clone().requires_grad_()
    out = _add_top_down(grad_lateral, coarser)
    assert out.data_ptr() != grad_lateral.data_ptr() and torch.equal(out.detach(), expected)


def test_mixed_dtypes_keep_the_promoting_sum():
    lateral, coarser = torch.randn(1, 2, 4, 4).bfloat16(), torch.randn(1, 2, 2, 2)
    with torch.no_grad():
        out = _add_top_down(lateral.clone(), coarser)
    expected = lateral + torch.nn.functional.interpolate(coarser, size=(4, 4), mode="nearest")
    assert out.dtype == torch.float32 and torch.equal(out, expected)


def test_swap_touches_exact_types_only_and_refuses_a_foreign_class():
    class OwnFPN(FeaturePyramidNetwork):
        pass

    holder = torch.nn.ModuleList([FeaturePyramidNetwork([4, 8], 4), OwnFPN([4], 4)])
    assert fuse_fpn_top_down(holder) == 1
    assert type(holder[0]) is FusedTopDownFPN and type(holder[1]) is OwnFPN
    assert fuse_fpn_top_down(holder) == 0  # already switched
    with pytest.raises(TypeError, match="must subclass FeaturePyramidNetwork"):
        swap_exact_type(holder, FeaturePyramidNetwork, torch.nn.Linear)
