"""Box regression losses, shared by the RPN and the RoI box branch.

Input: ``RPNLossInputs`` or ``RoILossInputs`` (``modeling/structures.py``, the single
specification of their tensors). Smooth-L1 reads ``box_deltas`` / ``box_targets``, GIoU
``pred_boxes`` / ``gt_boxes``; the normaliser N is the length of ``objectness`` (rpn, N = S) or of
``class_logits`` (roi, N = R).

Following torchvision, the per-positive losses are SUMMED and divided by the number of SAMPLED
entries N (positives + negatives), not by the number of positives: the box term then keeps the
same scale relative to the classification term whatever the positive fraction is.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss

from maskrcnn.losses._checks import require_ndim, require_same_shape, require_tensors
from maskrcnn.modeling.structures import RoILossInputs, RPNLossInputs


def sampled_count(branch: Mapping[str, object], where: str) -> int:
    """Number of sampled entries of the branch: len(objectness) for "rpn", len(class_logits)
    for "roi"."""
    keys = [k for k in ("objectness", "class_logits") if k in branch]
    if len(keys) != 1:
        raise KeyError(
            f"{where}: cannot tell the normaliser; the branch dict needs exactly one of "
            f"'objectness' (rpn) or 'class_logits' (roi), found keys {sorted(branch)}"
        )
    (source,) = require_tensors(branch, keys, where)
    return int(source.shape[0])


def _paired_boxes(branch: Mapping[str, object], keys: tuple[str, str], where: str) -> tuple[Tensor, Tensor, int]:
    pred, target = require_tensors(branch, keys, where)
    require_ndim(pred, 2, keys[0], where, trailing=(4,))
    require_same_shape(pred, target, keys, where)
    n = sampled_count(branch, where)
    if pred.shape[0] > n:
        raise ValueError(
            f"{where}: {pred.shape[0]} positive boxes but only {n} sampled entries; positives must be "
            f"a subset of the sampled anchors/RoIs"
        )
    return pred, target, n


class SmoothL1BoxLoss(nn.Module):
    """Smooth-L1 on encoded deltas, ``sum over positives / N`` (torchvision's RPN and RoI loss).

    Args:
        beta: switch point between the quadratic and linear parts; torchvision uses 1/9 for both
            branches. 0 gives plain L1.

    No positives gives ``box_deltas.sum() * 0``: a zero that keeps the graph.
    """

    def __init__(self, beta: float = 1.0 / 9.0) -> None:
        super().__init__()
        if beta < 0:
            raise ValueError(f"{type(self).__name__}: beta must be >= 0, got {beta}")
        self.beta = float(beta)

    def forward(self, branch: RPNLossInputs | RoILossInputs) -> Tensor:
        """branch: the "rpn" or "roi" dict. Returns a float32 scalar."""
        where = type(self).__name__
        deltas, targets, n = _paired_boxes(branch, ("box_deltas", "box_targets"), where)
        if deltas.shape[0] == 0:
            return deltas.float().sum() * 0.0
        with torch.autocast(device_type=deltas.device.type, enabled=False):
            total = F.smooth_l1_loss(deltas.float(), targets.float(), beta=self.beta, reduction="sum")
        return total / n

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class GIoUBoxLoss(nn.Module):
    """``1 - GIoU(pred_boxes, gt_boxes)``, summed over positives and divided by N (same
    normaliser as SmoothL1BoxLoss, so the two are interchangeable in the config).

    Works on decoded boxes, so the loss is invariant to the BoxCoder weights. Predicted boxes are
    expected to be well-formed (x2 > x1, y2 > y1); decoded deltas always are.

    Args:
        eps: added to union / enclosing areas to avoid division by zero.
    """

    def __init__(self, eps: float = 1e-7) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, branch: RPNLossInputs | RoILossInputs) -> Tensor:
        """branch: the "rpn" or "roi" dict. Returns a float32 scalar."""
        where = type(self).__name__
        pred, gt, n = _paired_boxes(branch, ("pred_boxes", "gt_boxes"), where)
        if pred.shape[0] == 0:
            return pred.float().sum() * 0.0
        with torch.autocast(device_type=pred.device.type, enabled=False):
            total = generalized_box_iou_loss(pred.float(), gt.float(), reduction="sum", eps=self.eps)
        return total / n

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
