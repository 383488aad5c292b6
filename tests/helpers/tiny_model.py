"""A random tiny Mask R-CNN whose detections depend on the image (export tests)."""

from __future__ import annotations

import torch
from torch import nn


def build_tiny_model(num_classes: int = 3, score_thresh: float = 0.0, seed: int = 0) -> nn.Module:
    """A random resnet18/32-channel Mask R-CNN for 64-128 px images, in eval mode.

    The default initialisation gives almost constant objectness and class scores, so detections
    would hardly depend on the image; wider classifier weights make the number of proposals and
    detections vary with the content, which is what exercises the dynamic detection count. A
    canonical RoI scale of 48 px (instead of 224) spreads the RoIs of such small images over all
    four FPN levels.
    """
    from maskrcnn.modeling.build import build_mask_rcnn

    torch.manual_seed(seed)
    net = build_mask_rcnn(
        num_classes,
        backbone={"name": "resnet18", "out_channels": 32, "norm": "bn"},
        rpn={"pre_nms_top_n_test": 20, "post_nms_top_n_test": 1000},
        roi_heads={"score_thresh": score_thresh, "representation_size": 64, "mask_layers": (32, 32)},
        transform={"min_size": 96, "max_size": 128},
    )
    nn.init.normal_(net.rpn.head.cls_logits.weight, std=1.0)
    nn.init.normal_(net.rpn.head.bbox_pred.weight, std=0.1)
    nn.init.normal_(net.roi_heads.box_predictor.cls_score.weight, std=1.0)
    for pooler in (net.roi_heads.box_pooler, net.roi_heads.mask_pooler):
        pooler.canonical_scale = 48
    return net.eval()
