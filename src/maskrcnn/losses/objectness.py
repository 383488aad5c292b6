"""RPN objectness losses. Input: ``RPNLossInputs`` (``modeling/structures.py``, the single
specification of its tensors); they read ``objectness`` and ``labels``."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskrcnn.losses._checks import require_ndim, require_same_shape, require_tensors
from maskrcnn.losses.focal import sigmoid_focal_loss
from maskrcnn.modeling.structures import RPNLossInputs


def _objectness_inputs(rpn: Mapping[str, object], where: str) -> tuple[Tensor, Tensor]:
    logits, labels = require_tensors(rpn, ("objectness", "labels"), where)
    require_ndim(logits, 1, "objectness", where)
    require_same_shape(logits, labels, ("objectness", "labels"), where)
    return logits, labels


class BCEObjectnessLoss(nn.Module):
    """Binary cross-entropy over the sampled anchors, averaged over S (torchvision's RPN loss).

    No sampled anchor (S = 0) gives ``objectness.sum() * 0``: a zero that keeps the graph, where
    torchvision would return NaN.
    """

    def forward(self, rpn: RPNLossInputs) -> Tensor:
        """rpn: the "rpn" dict. Returns a float32 scalar."""
        logits, labels = _objectness_inputs(rpn, f"{type(self).__name__}['rpn']")
        if logits.numel() == 0:
            return logits.float().sum() * 0.0
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


class FocalObjectnessLoss(nn.Module):
    """Sigmoid focal loss summed over the anchors and divided by ``max(1, #positive anchors)``.

    Meant for ``rpn.batch_size_per_image: null`` (every non-ignored anchor), where dividing by S
    would let the huge number of easy negatives shrink the loss.

    Args:
        alpha: weight of positive anchors (negatives get 1 - alpha); None = no weighting.
        gamma: focusing exponent >= 0.
    """

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0) -> None:
        super().__init__()
        self.alpha = None if alpha is None else float(alpha)
        self.gamma = float(gamma)

    def forward(self, rpn: RPNLossInputs) -> Tensor:
        """rpn: the "rpn" dict. Returns a float32 scalar."""
        logits, labels = _objectness_inputs(rpn, f"{type(self).__name__}['rpn']")
        total = sigmoid_focal_loss(logits, labels, self.alpha, self.gamma, reduction="sum")
        num_pos = (labels > 0.5).sum().clamp_min(1)
        return total / num_pos

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}"
