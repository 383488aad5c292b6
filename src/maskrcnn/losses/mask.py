"""Mask losses. Input: ``MaskLossInputs`` (``modeling/structures.py``, the single specification
of its tensors): ``logits`` and ``targets``.

Both losses average over all Q*M*M pixels (torchvision's ``maskrcnn_loss``); Q = 0 gives
``logits.sum() * 0``, a zero that keeps the graph.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskrcnn.losses._checks import require_ndim, require_same_shape, require_tensors
from maskrcnn.losses.focal import sigmoid_focal_loss
from maskrcnn.modeling.structures import MaskLossInputs


def _mask_inputs(mask: Mapping[str, object], where: str) -> tuple[Tensor, Tensor]:
    logits, targets = require_tensors(mask, ("logits", "targets"), where)
    require_ndim(logits, 3, "logits", where)
    require_same_shape(logits, targets, ("logits", "targets"), where)
    return logits, targets


class BCEMaskLoss(nn.Module):
    """Per-pixel binary cross-entropy with logits, mean over pixels, computed in float32."""

    def forward(self, mask: MaskLossInputs) -> Tensor:
        """mask: the "mask" dict. Returns a float32 scalar."""
        logits, targets = _mask_inputs(mask, f"{type(self).__name__}['mask']")
        if logits.numel() == 0:
            return logits.float().sum() * 0.0
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


class FocalMaskLoss(nn.Module):
    """Per-pixel sigmoid focal loss, mean over pixels.

    Args:
        alpha: weight of foreground pixels (background gets 1 - alpha); None = no weighting.
        gamma: focusing exponent >= 0. ``gamma=0, alpha=None`` equals BCEMaskLoss.
    """

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0) -> None:
        super().__init__()
        self.alpha = None if alpha is None else float(alpha)
        self.gamma = float(gamma)

    def forward(self, mask: MaskLossInputs) -> Tensor:
        """mask: the "mask" dict. Returns a float32 scalar."""
        logits, targets = _mask_inputs(mask, f"{type(self).__name__}['mask']")
        return sigmoid_focal_loss(logits, targets, self.alpha, self.gamma, reduction="mean")

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}"
