"""Functional focal-loss primitives (Lin et al., "Focal Loss for Dense Object Detection", 2017).

Both functions compute in float32 with autocast disabled: under bf16/fp16 autocast, ``sigmoid``
saturates and ``(1 - p_t) ** gamma`` underflows, which turns into NaN gradients. Working from
log-sigmoid / log-softmax keeps the cross-entropy part exact for large logits.

With ``gamma=0`` and ``alpha=None`` the two functions reduce to
``F.binary_cross_entropy_with_logits`` / ``F.cross_entropy`` (same reduction), which the tests
check.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from maskrcnn.losses._checks import check_reduction, require_ndim, require_same_shape

# Lower bound for the base of ``(1 - p_t) ** gamma``: for 0 < gamma < 1 the derivative of the
# power is infinite at exactly 0 (reached when float32 sigmoid saturates), which would give NaN.
_TINY = torch.finfo(torch.float32).tiny


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    """Apply ``reduction``; the mean of an empty tensor is a zero that keeps the graph."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.mean() if loss.numel() > 0 else loss.sum() * 0.0


def _check_gamma(gamma: float, where: str) -> None:
    if gamma < 0:
        raise ValueError(f"{where}: gamma must be >= 0, got {gamma}")


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> Tensor:
    """Binary focal loss on logits, element-wise.

    ``loss = alpha_t * (1 - p_t) ** gamma * BCE(logits, targets)`` with ``p = sigmoid(logits)``,
    ``p_t = p * t + (1 - p) * (1 - t)`` and ``alpha_t = alpha * t + (1 - alpha) * (1 - t)``.
    Soft targets in [0, 1] are allowed (mask targets are RoIAligned and therefore soft).

    Args:
        logits: Tensor[*] any float dtype; cast to float32.
        targets: Tensor[*] same shape as ``logits``, values in [0, 1].
        alpha: weight of the positive term (``1 - alpha`` for negatives); None = no weighting.
        gamma: focusing exponent >= 0; 0 disables the modulating factor.
        reduction: "none" | "mean" | "sum". The mean of an empty input is 0 (with grad path).

    Returns:
        Tensor[*] float32 for "none", else a float32 scalar.
    """
    where = "sigmoid_focal_loss"
    require_same_shape(logits, targets, ("logits", "targets"), where)
    check_reduction(reduction, where)
    _check_gamma(gamma, where)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        x = logits.float()
        t = targets.float()
        loss = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        if gamma != 0:
            # 1 - p_t written with sigmoid(-x) instead of 1 - sigmoid(x): no cancellation.
            one_minus_pt = torch.sigmoid(x) * (1.0 - t) + torch.sigmoid(-x) * t
            loss = loss * one_minus_pt.clamp_min(_TINY).pow(gamma)
        if alpha is not None:
            loss = loss * (alpha * t + (1.0 - alpha) * (1.0 - t))
        return _reduce(loss, reduction)


def _class_weights(alpha: float | Tensor, labels: Tensor, num_classes: int, where: str) -> Tensor:
    """Per-sample alpha: float -> alpha for foreground (label > 0), 1 - alpha for background;
    Tensor[C] -> alpha[label]."""
    if isinstance(alpha, Tensor):
        if alpha.shape != (num_classes,):
            raise ValueError(
                f"{where}: alpha tensor must have shape ({num_classes},) = number of logit columns, "
                f"got {tuple(alpha.shape)}"
            )
        return alpha.to(device=labels.device, dtype=torch.float32)[labels]
    fg = torch.full(labels.shape, float(alpha), dtype=torch.float32, device=labels.device)
    return torch.where(labels > 0, fg, 1.0 - fg)


def softmax_focal_loss(
    logits: Tensor,
    labels: Tensor,
    gamma: float = 2.0,
    alpha: float | Tensor | None = None,
    reduction: str = "none",
) -> Tensor:
    """Multi-class (softmax) focal loss: ``loss_i = -alpha_i * (1 - p_i) ** gamma * log p_i`` where
    ``p_i`` is the softmax probability of sample i's label.

    Args:
        logits: Tensor[R, C] any float dtype; cast to float32. Column 0 is background.
        labels: Tensor[R] int64 in [0, C).
        gamma: focusing exponent >= 0; 0 disables the modulating factor.
        alpha: None = no weighting; float = weight of foreground samples (label > 0), background
            samples get ``1 - alpha``; Tensor[C] = per-class weight ``alpha[label]``.
            Unlike ``F.cross_entropy(weight=...)`` the "mean" reduction divides by R, not by the
            sum of weights.
        reduction: "none" | "mean" | "sum". The mean of an empty input is 0 (with grad path).

    Returns:
        Tensor[R] float32 for "none", else a float32 scalar.
    """
    where = "softmax_focal_loss"
    require_ndim(logits, 2, "logits", where)
    require_ndim(labels, 1, "labels", where)
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{where}: {logits.shape[0]} logit rows but {labels.shape[0]} labels")
    if labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{where}: labels must be int64, got {labels.dtype}")
    check_reduction(reduction, where)
    _check_gamma(gamma, where)
    num_classes = logits.shape[1]
    if labels.numel() > 0 and bool(((labels < 0) | (labels >= num_classes)).any()):
        raise ValueError(
            f"{where}: labels must lie in [0, {num_classes}), got min {int(labels.min())} max {int(labels.max())}"
        )
    labels = labels.long()
    with torch.autocast(device_type=logits.device.type, enabled=False):
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, labels[:, None]).squeeze(1)
        loss = -log_p
        if gamma != 0:
            # -expm1(log p) = 1 - p, accurate when p is close to 1.
            loss = loss * (-torch.expm1(log_p)).clamp_min(_TINY).pow(gamma)
        if alpha is not None:
            loss = loss * _class_weights(alpha, labels, num_classes, where)
        return _reduce(loss, reduction)
