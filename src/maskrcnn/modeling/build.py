"""Build a MaskRCNN from plain keyword dictionaries (one per part).

Defaults reproduce torchvision's ``maskrcnn_resnet50_fpn`` (v1) exactly, including the legacy
``roi_align.aligned=False``; our Hydra configs opt into ``aligned=True``.

NUM_CLASSES CONVENTION: ``num_classes`` counts FOREGROUND classes only (K). The box and mask
predictors get K + 1 outputs, output 0 being background. torchvision's COCO models have 91
outputs, i.e. ``num_classes=90`` here.
"""

from __future__ import annotations

from typing import Any

from maskrcnn.modeling.backbone import build_backbone
from maskrcnn.modeling.heads import (
    PREDICTOR_INITS,
    FastRCNNPredictor,
    MaskRCNNHeads,
    MaskRCNNPredictor,
    TwoMLPHead,
    use_torchvision_predictor_init,
)
from maskrcnn.modeling.mask_rcnn import MaskRCNN
from maskrcnn.modeling.poolers import MultiScaleRoIAlign
from maskrcnn.modeling.roi_heads import RoIHeads
from maskrcnn.modeling.rpn import RegionProposalNetwork
from maskrcnn.modeling.transform import ImageTransform
from maskrcnn.ops.memory_format import use_channels_last

# roi_heads dict keys that shape the heads rather than being RoIHeads arguments
_HEAD_SHAPE_DEFAULTS = {"representation_size": 1024, "mask_layers": (256, 256, 256, 256), "mask_dilation": 1}
_ROI_ALIGN_DEFAULTS = {
    "aligned": False,
    "sampling_ratio": 2,
    "interpolation": "bilinear",
    "box_output_size": 7,
    "mask_output_size": 14,
    "backward_threads": 1,
}


def _merge(defaults: dict, given: dict | None, part: str) -> dict:
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults)) if defaults else []
    if unknown:
        raise TypeError(f"build_mask_rcnn: unknown {part} option(s) {unknown}; valid: {sorted(defaults)}")
    return {**defaults, **given}


def build_mask_rcnn(
    num_classes: int,
    backbone: dict,
    rpn: dict | None = None,
    roi_heads: dict | None = None,
    transform: dict | None = None,
    roi_align: dict | None = None,
    mask_format: str = "prob",
    init_from: str | None = None,
    channels_last: bool = False,
) -> MaskRCNN:
    """Assemble a Mask R-CNN.

    Args:
        num_classes: number of FOREGROUND classes K (predictors get K + 1 outputs; COCO = 90
            for torchvision's 91-output checkpoints).
        backbone: kwargs of ``build_backbone`` (name, pretrained, trainable_layers, norm, out_channels).
        rpn: kwargs of ``RegionProposalNetwork`` (in_channels is taken from the backbone).
        roi_heads: kwargs of ``RoIHeads`` (fg_iou_thresh, bg_iou_thresh, batch_size_per_image,
            positive_fraction, bbox_reg_weights, score_thresh, nms_thresh, detections_per_img)
            plus head shapes: representation_size (1024), mask_layers ((256,)*4), mask_dilation (1),
            and predictor_init: "detectron2" (default: logits start near zero) | "torchvision"
            (its default Linear init and kaiming-normal mask logits).
        transform: kwargs of ``ImageTransform`` (min_size, max_size, image_mean, image_std,
            size_divisible, resize_in_training); its defaults are torchvision's.
        roi_align: aligned (False), sampling_ratio (2), interpolation ("bilinear"|"bicubic"),
            box_output_size (7), mask_output_size (14), backward_threads (1: torchvision's
            serial CPU backward; N > 1 splits it over N threads); applied to both poolers. ``aligned``
            also chooses the mask targets' and the mask paste's geometry (half-pixel-correct
            throughout, as detectron2; False is torchvision's legacy geometry everywhere).
        mask_format: "prob" | "binary" | "rle" (see MaskRCNN).
        init_from: optional path to a torchvision Mask R-CNN state dict to load (class-specific
            layers are re-initialised when the class count differs).
        channels_last: NHWC memory format for the conv stacks (``memory_format.use_channels_last``):
            faster, with float32 sums in another order, so off by default.
    """
    if num_classes < 1:
        raise ValueError(f"build_mask_rcnn: num_classes (foreground classes) must be >= 1, got {num_classes}")
    num_outputs = num_classes + 1
    if not isinstance(backbone, dict) or "name" not in backbone:
        raise ValueError(f"build_mask_rcnn: backbone must be a dict with at least 'name', got {backbone!r}")

    body = build_backbone(**backbone)
    channels = body.out_channels
    align = _merge(_ROI_ALIGN_DEFAULTS, roi_align, "roi_align")
    pooler_kwargs = {k: align[k] for k in ("aligned", "sampling_ratio", "interpolation", "backward_threads")}
    box_pooler = MultiScaleRoIAlign(output_size=align["box_output_size"], **pooler_kwargs)
    mask_pooler = MultiScaleRoIAlign(output_size=align["mask_output_size"], **pooler_kwargs)

    roi_kwargs: dict[str, Any] = dict(roi_heads or {})
    shapes = {k: roi_kwargs.pop(k, v) for k, v in _HEAD_SHAPE_DEFAULTS.items()}
    if "mask_size" in roi_kwargs:
        raise TypeError("build_mask_rcnn: mask_size is derived (2 * roi_align.mask_output_size); do not set it")
    box_size = align["box_output_size"]
    mask_layers = tuple(shapes["mask_layers"])
    predictor_init = roi_kwargs.pop("predictor_init", "detectron2")
    if predictor_init not in PREDICTOR_INITS:
        raise ValueError(
            f"build_mask_rcnn: roi_heads.predictor_init must be one of {PREDICTOR_INITS}, got {predictor_init!r}"
        )
    # Built in this order: a seed draws the same weights whatever the predictor_init.
    box_head = TwoMLPHead(channels * box_size * box_size, shapes["representation_size"])
    box_predictor = FastRCNNPredictor(shapes["representation_size"], num_outputs)
    mask_head = MaskRCNNHeads(channels, mask_layers, shapes["mask_dilation"])
    mask_predictor = MaskRCNNPredictor(mask_layers[-1], 256, num_outputs)
    if predictor_init == "torchvision":
        use_torchvision_predictor_init(box_predictor, mask_predictor)
    heads = RoIHeads(
        box_pooler=box_pooler,
        box_head=box_head,
        box_predictor=box_predictor,
        mask_pooler=mask_pooler,
        mask_head=mask_head,
        mask_predictor=mask_predictor,
        mask_size=2 * align["mask_output_size"],
        aligned_mask_targets=align["aligned"],
        **roi_kwargs,
    )
    rpn_kwargs = dict(rpn or {})
    rpn_kwargs.setdefault("in_channels", channels)
    model = MaskRCNN(
        transform=ImageTransform(**(transform or {})),
        backbone=body,
        rpn=RegionProposalNetwork(**rpn_kwargs),
        roi_heads=heads,
        mask_format=mask_format,
        # One geometry end to end: aligned pooling, aligned mask targets, exact paste.
        paste_aligned=align["aligned"],
    )
    if init_from is not None:
        from maskrcnn.modeling.checkpoint import load_torchvision_checkpoint

        load_torchvision_checkpoint(model, init_from)
    if channels_last:
        use_channels_last(model)
    return model
