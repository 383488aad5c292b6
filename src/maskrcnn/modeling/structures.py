"""The dicts passed between the data pipeline, the network and the losses: their one specification.

Each ``TypedDict`` below documents every key on the line that declares it (shape, dtype, box
format). docs/design.md explains how the pieces fit together and repeats these lines in its
tables; tests/modeling/test_structures.py fails when the two disagree. ``validate_targets`` is the only
place that checks user-given targets: ``MaskRCNN.forward`` calls it once, and the stages behind it
rely on it.

Symbols: N gt instances, C crowd regions, D detections, K foreground classes, S sampled anchors,
P positive sampled anchors, R sampled RoIs, Q positive sampled RoIs, M x M mask resolution
(``RoIHeads.mask_size``). "Absolute pixels" are pixels of the image the dict goes with.
"""

import sys
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict
else:  # Python 3.10's typing.TypedDict ignores NotRequired; typing_extensions comes with torch
    from typing_extensions import NotRequired, TypedDict

MASK_THRESHOLD = 0.5
"""A pixel belongs to the mask when its probability is ``> MASK_THRESHOLD`` (strict, as in
torchvision's reference COCO evaluation, so AP numbers stay comparable)."""

MASK_FORMATS = ("prob", "binary", "rle")
"""How ``Detection["masks"]`` is returned (``MaskRCNN(mask_format=...)``): probabilities,
thresholded with ``MASK_THRESHOLD``, or COCO run-length encodings."""


class Target(TypedDict):
    """Ground truth of one image, produced by the data pipeline (``data/coco.py``)."""

    boxes: Tensor  # Tensor[N, 4] float32, xyxy, absolute pixels; x2 > x1 and y2 > y1
    labels: Tensor  # Tensor[N] int64, contiguous class ids in 1..K (0 is background)
    masks: Tensor  # Tensor[N, H, W] uint8 in {0, 1}, (H, W) = size of the image tensor
    image_id: NotRequired[int]  # id of the image in its annotation file; errors name it
    crowd_boxes: NotRequired[Tensor]  # Tensor[C, 4] float32, xyxy, absolute pixels of the iscrowd regions
    orig_size: NotRequired[tuple[int, int]]  # (H0, W0) of the image file before augmentation


class Detection(TypedDict):
    """Predictions for one image, in the pixels of the image tensor given to ``MaskRCNN``."""

    boxes: Tensor  # Tensor[D, 4] float32, xyxy, absolute pixels
    labels: Tensor  # Tensor[D] int64 in 1..K
    scores: Tensor  # Tensor[D] float32 class probability, in decreasing order
    masks: Tensor | list[dict]  # per MASK_FORMATS: "prob" Tensor[D, 1, H, W] float32 probabilities,
    # "binary" Tensor[D, 1, H, W] bool (> MASK_THRESHOLD), "rle" D COCO RLE dicts {"size": [H, W], "counts": str}


class RoIDetection(TypedDict):
    """Output of ``RoIHeads`` in eval mode, before ``MaskRCNN`` maps it to ``Detection``."""

    boxes: Tensor  # Tensor[D, 4] float32, xyxy, absolute pixels of the resized image
    labels: Tensor  # Tensor[D] int64 in 1..K
    scores: Tensor  # Tensor[D] float32 class probability, in decreasing order
    masks: Tensor  # Tensor[D, 1, M, M] float32 probabilities of the detected class, relative to the box


class RPNLossInputs(TypedDict):
    """What the RPN losses read. Sampled anchors: positives of all images, then negatives."""

    objectness: Tensor  # Tensor[S] float logits of the sampled anchors
    labels: Tensor  # Tensor[S] float32 in {0, 1}, 1 = foreground anchor
    box_deltas: Tensor  # Tensor[P, 4] float predicted deltas of the positive sampled anchors
    box_targets: Tensor  # Tensor[P, 4] float32 encoded targets (BoxCoder weights 1, 1, 1, 1)
    pred_boxes: Tensor  # Tensor[P, 4] float decoded predicted boxes, xyxy, absolute pixels of the resized image
    gt_boxes: Tensor  # Tensor[P, 4] float32 matched gt boxes, xyxy, absolute pixels of the resized image


class RoILossInputs(TypedDict):
    """What the RoI classification and box losses read (all sampled RoIs of the batch)."""

    class_logits: Tensor  # Tensor[R, K+1] float logits of the sampled RoIs (column 0 = background)
    labels: Tensor  # Tensor[R] int64 in 0..K (0 = background)
    box_deltas: Tensor  # Tensor[Q, 4] float predicted deltas of the positive RoIs at their gt class
    box_targets: Tensor  # Tensor[Q, 4] float32 encoded targets (RoIHeads bbox_reg_weights, default 10, 10, 5, 5)
    pred_boxes: Tensor  # Tensor[Q, 4] float decoded predicted boxes, xyxy, absolute pixels of the resized image
    gt_boxes: Tensor  # Tensor[Q, 4] float32 matched gt boxes, xyxy, absolute pixels of the resized image


class MaskLossInputs(TypedDict):
    """What the mask losses read (the positive RoIs, in the order of ``RoILossInputs``)."""

    logits: Tensor  # Tensor[Q, M, M] float mask logits of the positive RoIs at their gt class
    targets: Tensor  # Tensor[Q, M, M] float32 in [0, 1], gt mask RoIAligned onto the RoI (soft at the edges)


class RoIHeadsLossInputs(TypedDict):
    """The part of ``LossInputs`` that ``RoIHeads`` builds."""

    roi: RoILossInputs  # RoILossInputs of the sampled RoIs
    mask: MaskLossInputs  # MaskLossInputs of their positive part


class LossInputs(TypedDict):
    """Everything the criterion reads, all images of the batch concatenated."""

    rpn: RPNLossInputs  # RPNLossInputs, built by RegionProposalNetwork
    roi: RoILossInputs  # RoILossInputs, built by RoIHeads
    mask: MaskLossInputs  # MaskLossInputs, built by RoIHeads


class MaskRCNNOutput(TypedDict):
    """``MaskRCNN.forward``'s result: training gives loss_inputs, eval detections, eval with targets both."""

    loss_inputs: NotRequired[LossInputs]  # LossInputs; present whenever targets are given
    detections: NotRequired[list[Detection]]  # one Detection per image; eval mode only


def describe_target(target: Mapping, index: int) -> str:
    """``"target 3 (image_id=42)"``: how error messages name an image."""
    return f"target {index} (image_id={target.get('image_id', '?')})"


def _shape(value: object) -> object:
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__


def validate_targets(images: Sequence[Tensor], targets: Sequence[Target], where: str = "targets") -> None:
    """Raise a clear error, naming the image, unless every target follows ``Target``.

    Args:
        images: the image tensors [3, H, W] the targets belong to (masks must match their size).
        targets: one dict per image.
        where: prefix of the error messages (the caller's name).
    """
    if len(targets) != len(images):
        raise ValueError(f"{where}: got {len(images)} images but {len(targets)} targets")
    for i, (image, t) in enumerate(zip(images, targets, strict=True)):
        if not isinstance(t, Mapping):
            raise TypeError(f"{where}: target {i} must be a dict, got {type(t).__name__}")
        name = describe_target(t, i)
        for key in ("boxes", "labels", "masks"):
            if key not in t:
                raise KeyError(f"{where}: {name} has no '{key}' key")
        boxes, labels, masks = t["boxes"], t["labels"], t["masks"]
        _check_box_tensor(boxes, "boxes", name, where)
        if not isinstance(labels, Tensor) or labels.dim() != 1:
            raise ValueError(f"{where}: labels of {name} must be a Tensor[N], got {_shape(labels)}")
        if labels.dtype != torch.int64:
            raise TypeError(f"{where}: labels of {name} must be int64, got {labels.dtype}")
        size = tuple(image.shape[-2:])
        if not isinstance(masks, Tensor) or masks.dim() != 3 or tuple(masks.shape[-2:]) != size:
            raise ValueError(f"{where}: masks of {name} must be [N, H, W] with (H, W) = {size}, got {_shape(masks)}")
        if not boxes.shape[0] == labels.shape[0] == masks.shape[0]:
            raise ValueError(
                f"{where}: {name} has {boxes.shape[0]} boxes, {labels.shape[0]} labels and {masks.shape[0]} masks"
            )
        degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
        if degenerate.any():
            j = int(degenerate.nonzero()[0, 0])
            raise ValueError(f"{where}: {name} box {j} = {boxes[j].tolist()} has non-positive width or height")
        if labels.numel() > 0 and int(labels.min()) < 1:
            j = int((labels < 1).nonzero()[0, 0])
            raise ValueError(
                f"{where}: {name} label {j} is {int(labels[j])}; labels are class ids 1..K (0 is background)"
            )
        if t.get("crowd_boxes") is not None:
            _check_box_tensor(t["crowd_boxes"], "crowd_boxes", name, where)


def _check_box_tensor(boxes: object, key: str, name: str, where: str) -> None:
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{where}: {key} of {name} must be a Tensor[N, 4], got {_shape(boxes)}")
    if not boxes.is_floating_point():
        raise TypeError(f"{where}: {key} of {name} must be float, got {boxes.dtype}")
