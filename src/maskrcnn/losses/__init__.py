"""Loss terms of Mask R-CNN; inputs are ``modeling/structures.py``'s LossInputs, see docs/design.md ("Criterion")."""

from .box_regression import GIoUBoxLoss, SmoothL1BoxLoss
from .classification import CrossEntropyClassifierLoss, FocalClassifierLoss
from .criterion import TERMS, MaskRCNNCriterion, build_criterion
from .focal import sigmoid_focal_loss, softmax_focal_loss
from .mask import BCEMaskLoss, FocalMaskLoss
from .objectness import BCEObjectnessLoss, FocalObjectnessLoss

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
