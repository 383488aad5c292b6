"""Box <-> regression-delta coding (R-CNN parameterisation), numerically equal to torchvision.

The arithmetic is written in the same order as ``torchvision.models.detection._utils.BoxCoder``
so that encoded targets and decoded boxes are bit-identical, which is what makes a
torchvision checkpoint produce the same detections here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class BoxCoder:
    """Encode gt boxes relative to reference boxes (anchors / proposals) and decode back.

    Args:
        weights: (wx, wy, ww, wh) multipliers of the (dx, dy, dw, dh) deltas;
            (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the box head.
        clip: upper bound applied to dw / dh before ``exp`` so huge predicted deltas
            cannot overflow.
    """

    def __init__(self, weights: tuple[float, float, float, float], clip: float = math.log(1000.0 / 16)) -> None:
        if len(weights) != 4:
            raise ValueError(f"BoxCoder weights must have 4 entries (wx, wy, ww, wh), got {weights}")
        self.weights = tuple(float(w) for w in weights)
        self.clip = clip

    def encode(self, gt_boxes: Tensor, anchors: Tensor) -> Tensor:
        """Regression targets that move ``anchors`` onto ``gt_boxes`` (row-wise pairs).

        Args:
            gt_boxes: Tensor[N, 4] float, xyxy, absolute pixels (the matched gt per anchor).
            anchors: Tensor[N, 4] float, xyxy, absolute pixels (must have positive width/height).

        Returns:
            Tensor[N, 4] float (dx, dy, dw, dh) already multiplied by ``weights``.
        """
        if gt_boxes.shape != anchors.shape or gt_boxes.dim() != 2 or gt_boxes.shape[-1] != 4:
            raise ValueError(
                f"BoxCoder.encode expects gt_boxes and anchors of equal shape [N, 4], "
                f"got {tuple(gt_boxes.shape)} and {tuple(anchors.shape)}"
            )
        # Weights as tensors (not Python floats) to reproduce torchvision's kernels exactly.
        w = torch.as_tensor(self.weights, dtype=gt_boxes.dtype, device=gt_boxes.device)
        wx, wy, ww, wh = w[0], w[1], w[2], w[3]

        ex_widths = anchors[:, 2] - anchors[:, 0]
        ex_heights = anchors[:, 3] - anchors[:, 1]
        ex_ctr_x = anchors[:, 0] + 0.5 * ex_widths
        ex_ctr_y = anchors[:, 1] + 0.5 * ex_heights

        gt_widths = gt_boxes[:, 2] - gt_boxes[:, 0]
        gt_heights = gt_boxes[:, 3] - gt_boxes[:, 1]
        gt_ctr_x = gt_boxes[:, 0] + 0.5 * gt_widths
        gt_ctr_y = gt_boxes[:, 1] + 0.5 * gt_heights

        dx = wx * (gt_ctr_x - ex_ctr_x) / ex_widths
        dy = wy * (gt_ctr_y - ex_ctr_y) / ex_heights
        dw = ww * torch.log(gt_widths / ex_widths)
        dh = wh * torch.log(gt_heights / ex_heights)
        return torch.stack((dx, dy, dw, dh), dim=1)

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Apply ``deltas`` to ``anchors``.

        Args:
            deltas: Tensor[N, 4*C] float, C sets of (dx, dy, dw, dh) per reference box
                (C = 1 for the RPN, C = num_classes + 1 for the box head).
            anchors: Tensor[N, 4] float, xyxy, absolute pixels.

        Returns:
            Tensor[N, C, 4] float32-or-deltas-dtype boxes, xyxy, absolute pixels (not clipped).
        """
        if deltas.dim() != 2 or deltas.shape[1] % 4 != 0 or deltas.shape[0] != anchors.shape[0]:
            raise ValueError(
                f"BoxCoder.decode expects deltas [N, 4*C] and anchors [N, 4], "
                f"got {tuple(deltas.shape)} and {tuple(anchors.shape)}"
            )
        num_sets = deltas.shape[1] // 4
        anchors = anchors.to(deltas.dtype)

        widths = anchors[:, 2] - anchors[:, 0]
        heights = anchors[:, 3] - anchors[:, 1]
        ctr_x = anchors[:, 0] + 0.5 * widths
        ctr_y = anchors[:, 1] + 0.5 * heights

        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = torch.clamp(deltas[:, 2::4] / ww, max=self.clip)
        dh = torch.clamp(deltas[:, 3::4] / wh, max=self.clip)

        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        half_w = 0.5 * (torch.exp(dw) * widths[:, None])
        half_h = 0.5 * (torch.exp(dh) * heights[:, None])

        boxes = torch.stack((pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), dim=2)
        return boxes.reshape(deltas.shape[0], num_sets, 4)
