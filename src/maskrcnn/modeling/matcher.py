"""Anchor / proposal to ground-truth matching, fg/bg sampling, and crowd-region ignoring.

Matching and sampling reproduce torchvision's ``Matcher`` and
``BalancedPositiveNegativeSampler`` exactly (including how the sampler consumes the global
torch RNG), so that seeded runs select the same anchors / RoIs as torchvision.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou


class Matcher:
    """Assign each prediction (column of an IoU matrix) to its best ground-truth box.

    Args:
        high_threshold: IoU >= this is a match (foreground).
        low_threshold: IoU < this is background (BELOW_LOW); in between is BETWEEN (ignored).
        allow_low_quality_matches: also match, for every gt, the prediction(s) with the highest
            IoU with it (ties included) even if below ``high_threshold`` -- so every gt gets at
            least one anchor (Faster R-CNN RPN rule).
    """

    BELOW_LOW = -1
    BETWEEN = -2

    def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False) -> None:
        if low_threshold > high_threshold:
            raise ValueError(f"Matcher: low_threshold {low_threshold} must be <= high_threshold {high_threshold}")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: Tensor) -> Tensor:
        """
        Args:
            iou: Tensor[G, N] float, IoU between G gt boxes and N predictions.

        Returns:
            Tensor[N] int64: gt index in [0, G-1], or -1 (BELOW_LOW), or -2 (BETWEEN).
            With G == 0 every prediction is BELOW_LOW (pure background image).
        """
        if iou.dim() != 2:
            raise ValueError(f"Matcher expects an IoU matrix [G, N], got shape {tuple(iou.shape)}")
        num_gt, num_pred = iou.shape
        if num_gt == 0 or num_pred == 0:
            return torch.full((num_pred,), self.BELOW_LOW, dtype=torch.int64, device=iou.device)

        best_iou, matches = iou.max(dim=0)
        all_matches = matches.clone() if self.allow_low_quality_matches else None

        below = best_iou < self.low_threshold
        between = (best_iou >= self.low_threshold) & (best_iou < self.high_threshold)
        matches[below] = self.BELOW_LOW
        matches[between] = self.BETWEEN

        if all_matches is not None:
            # For every gt, the predictions tied for its highest IoU get their (argmax) gt back.
            best_per_gt = iou.max(dim=1).values
            pred_idx = torch.where(iou == best_per_gt[:, None])[1]
            matches[pred_idx] = all_matches[pred_idx]
        return matches


class BalancedSampler:
    """Sample a fixed-size, fixed-positive-fraction subset of labelled anchors / RoIs per image.

    Args:
        batch_size_per_image: number of samples per image; ``None`` disables sampling (every
            positive and negative is returned, no RNG is consumed).
        positive_fraction: maximal fraction of positives in the sample.
    """

    def __init__(self, batch_size_per_image: int | None, positive_fraction: float) -> None:
        if batch_size_per_image is not None and batch_size_per_image <= 0:
            raise ValueError(f"BalancedSampler: batch_size_per_image must be > 0 or None, got {batch_size_per_image}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"BalancedSampler: positive_fraction must be in [0, 1], got {positive_fraction}")
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, labels: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """
        Args:
            labels: per image Tensor[N_i] (any numeric dtype): >= 1 positive (a class id or 1.0),
                0 negative, -1 ignored.

        Returns:
            (positives, negatives): per image Tensor[p_i] / Tensor[n_i] int64 indices into
            ``labels[i]``, each sorted ascending (the order torchvision's mask-based
            sampler yields), disjoint.
        """
        positives, negatives = [], []
        for labels_per_image in labels:
            pos = torch.where(labels_per_image >= 1)[0]
            neg = torch.where(labels_per_image == 0)[0]
            if self.batch_size_per_image is not None:
                num_pos = min(pos.numel(), int(self.batch_size_per_image * self.positive_fraction))
                num_neg = min(neg.numel(), self.batch_size_per_image - num_pos)
                # Two randperm calls, positives first: the exact RNG consumption of torchvision.
                perm_pos = torch.randperm(pos.numel(), device=pos.device)[:num_pos]
                perm_neg = torch.randperm(neg.numel(), device=neg.device)[:num_neg]
                pos = pos[perm_pos].sort().values
                neg = neg[perm_neg].sort().values
            positives.append(pos)
            negatives.append(neg)
        return positives, negatives


def ignore_crowd_matches(
    labels: Tensor, boxes: Tensor, crowd_boxes: Tensor | None, iou_threshold: float = 0.5
) -> Tensor:
    """Mark as ignored (-1) the background items that overlap a crowd region.

    Crowd (``iscrowd``) regions contain unlabelled instances, so an anchor / proposal lying on
    one must train neither as positive nor as negative.

    Args:
        labels: Tensor[N] (float or int64): > 0 foreground, 0 background, -1 ignored.
        boxes: Tensor[N, 4] float, xyxy, absolute pixels (anchors or proposals).
        crowd_boxes: Tensor[M, 4] float, xyxy, absolute pixels, or None / M == 0 (no-op).
        iou_threshold: a background item whose best IoU with a crowd box is >= this is ignored.

    Returns:
        Tensor[N] same dtype as ``labels``; a new tensor (the input is never modified), or
        ``labels`` itself when there is no crowd box.
    """
    if crowd_boxes is None or crowd_boxes.numel() == 0 or labels.numel() == 0:
        return labels
    if crowd_boxes.dim() != 2 or crowd_boxes.shape[1] != 4:
        raise ValueError(f"crowd_boxes must be [M, 4] xyxy, got shape {tuple(crowd_boxes.shape)}")
    best_crowd_iou = box_iou(crowd_boxes.to(boxes.dtype), boxes).max(dim=0).values
    on_crowd = (labels == 0) & (best_crowd_iou >= iou_threshold)
    return torch.where(on_crowd, torch.full_like(labels, -1), labels)
