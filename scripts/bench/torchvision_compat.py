"""Our network in torchvision's exact Mask R-CNN configuration, for the parity tests and benchmarks.

The product's defaults come from ``conf/model/`` (aligned RoIAlign, our predictor initialisation);
this builder sets the values that differ so that a torchvision state dict loads with the same keys
and gives the same detections.
"""

from __future__ import annotations

from maskrcnn.modeling.build import build_mask_rcnn
from maskrcnn.modeling.mask_rcnn import MaskRCNN


def torchvision_compatible_mask_rcnn(
    num_classes_incl_bg: int = 91,
    backbone_norm: str = "bn",
    transform: dict | None = None,
    rpn: dict | None = None,
    roi_heads: dict | None = None,
    mask_format: str = "prob",
    backbone_name: str = "resnet50",
) -> MaskRCNN:
    """The exact architecture of ``torchvision.models.detection.maskrcnn_resnet50_fpn``.

    Args:
        num_classes_incl_bg: torchvision's ``num_classes`` (background included).
        backbone_name: "resnet50"; any other ResNet (e.g. "resnet101") gives torchvision's
            ``MaskRCNN(resnet_fpn_backbone(backbone_name, ...))`` layout instead.
        backbone_norm: "bn" matches ``maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)``
            (trainable BatchNorm2d); "frozen_bn" matches the pretrained COCO model (then also
            call ``set_frozen_bn_eps(model, 0.0)`` for the v1 checkpoint).
        transform / rpn / roi_heads: overrides, as for ``build_mask_rcnn``.
    """
    return build_mask_rcnn(
        num_classes=num_classes_incl_bg - 1,
        backbone={"name": backbone_name, "pretrained": False, "norm": backbone_norm},
        rpn=rpn,
        roi_heads=roi_heads,
        transform=transform,
        roi_align={"aligned": False, "sampling_ratio": 2, "interpolation": "bilinear"},
        mask_format=mask_format,
    )
