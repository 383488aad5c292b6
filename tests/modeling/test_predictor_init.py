"""`model.roi_heads.predictor_init`: detectron2's near-zero start (default) or torchvision's init."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor as TvBoxPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor as TvMaskPredictor

from maskrcnn.modeling.build import build_mask_rcnn
from maskrcnn.modeling.heads import FastRCNNPredictor, MaskRCNNPredictor, use_torchvision_predictor_init

BACKBONE = {"name": "resnet18", "pretrained": False, "trainable_layers": 5, "norm": "bn", "out_channels": 32}
HEADS = {"representation_size": 64, "mask_layers": (32, 32)}


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_torchvision_init_draws_exactly_what_torchvision_draws() -> None:
    """Same seed, same layer shapes: the re-drawn predictors equal torchvision's bit for bit."""
    box, mask = FastRCNNPredictor(64, 4), MaskRCNNPredictor(32, 256, 4)
    torch.manual_seed(7)
    tv_box = _tensors(TvBoxPredictor(64, 4))
    tv_mask = _tensors(TvMaskPredictor(32, 256, 4))
    torch.manual_seed(7)
    use_torchvision_predictor_init(box, mask)
    for ours, theirs in ((box.state_dict(), tv_box), (mask.state_dict(), tv_mask)):
        assert ours.keys() == theirs.keys()
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=key)


def test_build_chooses_the_init() -> None:
    """Default: logits start near 0 (detectron2); torchvision: default Linear and kaiming mask logits."""
    torch.manual_seed(0)
    default = build_mask_rcnn(num_classes=3, backbone=BACKBONE, roi_heads=HEADS)
    torch.manual_seed(0)
    tv = build_mask_rcnn(num_classes=3, backbone=BACKBONE, roi_heads={**HEADS, "predictor_init": "torchvision"})
    d_box, t_box = default.roi_heads.box_predictor, tv.roi_heads.box_predictor
    d_mask, t_mask = default.roi_heads.mask_predictor, tv.roi_heads.mask_predictor
    assert d_box.cls_score.weight.std() < 0.02 and not d_box.cls_score.bias.any()
    assert d_mask.mask_fcn_logits.weight.std() < 0.002 and not d_mask.mask_fcn_logits.bias.any()
    # nn.Linear's default: uniform within 1/sqrt(fan_in) (std = bound/sqrt(3)), biases not zero
    bound = 64**-0.5
    assert t_box.cls_score.weight.abs().max() <= bound and t_box.cls_score.bias.any()
    assert t_box.cls_score.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.2)
    # kaiming normal, fan_out of a 1x1 conv = number of outputs (4 incl. background): std sqrt(2/4)
    assert t_mask.mask_fcn_logits.weight.std().item() == pytest.approx((2 / 4) ** 0.5, rel=0.2)
    assert t_mask.mask_fcn_logits.bias.any()
    # every other layer is drawn the same way in both
    for key, value in default.backbone.state_dict().items():
        torch.testing.assert_close(value, tv.backbone.state_dict()[key], rtol=0, atol=0)


def test_unknown_init_is_one_line_error() -> None:
    with pytest.raises(ValueError, match="predictor_init must be one of"):
        build_mask_rcnn(num_classes=3, backbone=BACKBONE, roi_heads={**HEADS, "predictor_init": "xavier"})
