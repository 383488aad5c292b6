"""MaskRCNNCriterion: LossInputs -> dict of the five UNWEIGHTED loss terms.

Each term is a separate ``nn.Module`` reading one branch of ``LossInputs``
(``modeling/structures.py``), so a config can swap e.g. the box loss for GIoU without touching the
others. Weighting and logging belong to the LightningModule (``loss.weights.<term>``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from maskrcnn.losses.box_regression import GIoUBoxLoss, SmoothL1BoxLoss
from maskrcnn.losses.classification import CrossEntropyClassifierLoss, FocalClassifierLoss
from maskrcnn.losses.mask import BCEMaskLoss
from maskrcnn.losses.objectness import BCEObjectnessLoss, FocalObjectnessLoss
from maskrcnn.modeling.structures import LossInputs

# Output key -> (constructor argument / submodule name, LossInputs branch it reads).
_TERM_SOURCES: dict[str, tuple[str, Literal["rpn", "roi", "mask"]]] = {
    "loss_objectness": ("objectness", "rpn"),
    "loss_rpn_box": ("rpn_box", "rpn"),
    "loss_classifier": ("classifier", "roi"),
    "loss_box": ("box", "roi"),
    "loss_mask": ("mask", "mask"),
}

TERMS: tuple[str, ...] = tuple(_TERM_SOURCES)
"""The five keys of the criterion output, in a fixed order."""

_BRANCHES = ("rpn", "roi", "mask")


class MaskRCNNCriterion(nn.Module):
    """Applies one loss module per term.

    Args:
        objectness: module(rpn dict) -> scalar, e.g. BCEObjectnessLoss.
        rpn_box: module(rpn dict) -> scalar, e.g. SmoothL1BoxLoss(beta=1/9).
        classifier: module(roi dict) -> scalar, e.g. CrossEntropyClassifierLoss.
        box: module(roi dict) -> scalar, e.g. SmoothL1BoxLoss(beta=1/9).
        mask: module(mask dict) -> scalar, e.g. BCEMaskLoss.
    """

    def __init__(
        self,
        objectness: nn.Module,
        rpn_box: nn.Module,
        classifier: nn.Module,
        box: nn.Module,
        mask: nn.Module,
    ) -> None:
        super().__init__()
        self.objectness = objectness
        self.rpn_box = rpn_box
        self.classifier = classifier
        self.box = box
        self.mask = mask

    def forward(self, loss_inputs: LossInputs) -> dict[str, Tensor]:
        """loss_inputs: LossInputs with branches "rpn", "roi", "mask".

        Returns:
            {term: Tensor[] float32} with exactly the keys of ``TERMS``.
        """
        name = type(self).__name__
        if not isinstance(loss_inputs, Mapping):
            raise TypeError(f"{name}: loss_inputs must be a dict, got {type(loss_inputs).__name__}")
        missing = [b for b in _BRANCHES if b not in loss_inputs]
        if missing:
            raise KeyError(f"{name}: LossInputs is missing branch(es) {missing}; got {sorted(loss_inputs)}")
        losses: dict[str, Tensor] = {}
        for term, (module_name, branch) in _TERM_SOURCES.items():
            value = getattr(self, module_name)(loss_inputs[branch])
            if not isinstance(value, Tensor) or value.dim() != 0:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(
                    f"{name}: the '{module_name}' loss ({type(getattr(self, module_name)).__name__}) "
                    f"must return a scalar tensor for {term}, got {shape}"
                )
            losses[term] = value.to(torch.float32)
        return losses


def _preset(kind: str) -> dict[str, nn.Module]:
    """Default modules of each preset; mirrors conf/loss/<kind>.yaml."""
    torchvision_beta = 1.0 / 9.0
    if kind == "ce":
        return {
            "objectness": BCEObjectnessLoss(),
            "rpn_box": SmoothL1BoxLoss(torchvision_beta),
            "classifier": CrossEntropyClassifierLoss(),
            "box": SmoothL1BoxLoss(torchvision_beta),
            "mask": BCEMaskLoss(),
        }
    if kind == "focal":
        return {
            "objectness": FocalObjectnessLoss(alpha=0.25, gamma=2.0),
            "rpn_box": SmoothL1BoxLoss(torchvision_beta),
            "classifier": FocalClassifierLoss(gamma=2.0, alpha=None),
            "box": SmoothL1BoxLoss(torchvision_beta),
            "mask": BCEMaskLoss(),
        }
    if kind == "giou":
        modules = _preset("ce")
        modules["box"] = GIoUBoxLoss()
        return modules
    raise ValueError(f"build_criterion: kind must be 'ce', 'focal' or 'giou', got {kind!r}")


def build_criterion(kind: str = "ce", **modules: nn.Module) -> MaskRCNNCriterion:
    """Build a criterion from a preset, for scripts and tests (training uses the Hydra config).

    Args:
        kind: "ce" (torchvision's losses), "focal" (focal objectness + focal classifier) or
            "giou" ("ce" with the GIoU RoI box loss).
        **modules: replace individual slots, e.g. ``build_criterion("ce", mask=FocalMaskLoss())``;
            valid names: objectness, rpn_box, classifier, box, mask.
    """
    chosen = _preset(kind)
    unknown = sorted(set(modules) - set(chosen))
    if unknown:
        raise TypeError(f"build_criterion: unknown slot(s) {unknown}; valid: {sorted(chosen)}")
    chosen.update(modules)
    return MaskRCNNCriterion(**chosen)
