"""Loss terms of Mask R-CNN; inputs are ``modeling/structures.py``'s LossInputs, see docs/design.md ("Criterion")."""

from maskrcnn.losses.box_regression import GIoUBoxLoss, SmoothL1BoxLoss
from maskrcnn.losses.classification import CrossEntropyClassifierLoss, FocalClassifierLoss
from maskrcnn.losses.criterion import TERMS, MaskRCNNCriterion, build_criterion
from maskrcnn.losses.focal import sigmoid_focal_loss, softmax_focal_loss
from maskrcnn.losses.mask import BCEMaskLoss, FocalMaskLoss
from maskrcnn.losses.objectness import BCEObjectnessLoss, FocalObjectnessLoss

__all__ = [
    "TERMS",
    "BCEMaskLoss",
    "BCEObjectnessLoss",
    "CrossEntropyClassifierLoss",
    "FocalClassifierLoss",
    "FocalMaskLoss",
    "FocalObjectnessLoss",
    "GIoUBoxLoss",
    "MaskRCNNCriterion",
    "SmoothL1BoxLoss",
    "build_criterion",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
]
