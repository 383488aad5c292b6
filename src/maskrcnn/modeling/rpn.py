"""Region Proposal Network: shared conv head, proposal selection, anchor labelling/sampling.

Proposal selection and anchor sampling reproduce torchvision's RegionProposalNetwork (same
ops in the same order, same RNG use), so torchvision weights give identical proposals and
seeded training samples the same anchors. Losses are NOT computed here: the RPN returns
``structures.RPNLossInputs`` (the "rpn" part of LossInputs) and losses/criterion.py turns it into
scalars. Targets arrive already checked by ``structures.validate_targets``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

from maskrcnn.modeling.anchors import AnchorGenerator
from maskrcnn.modeling.box_coder import BoxCoder
from maskrcnn.modeling.matcher import BalancedSampler, Matcher, ignore_crowd_matches
from maskrcnn.modeling.structures import RPNLossInputs, Target
from maskrcnn.modeling.transform import ImageBatch


class RPNHead(nn.Module):
    """3x3 conv(s) + ReLU shared by all levels, then 1x1 objectness and box-delta predictors.

    state_dict keys (torchvision's): ``conv.{i}.0.weight/bias``, ``cls_logits.*``, ``bbox_pred.*``.
    """

    def __init__(self, in_channels: int, num_anchors: int, conv_depth: int = 1) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            *[
                nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.ReLU(inplace=True))
                for _ in range(conv_depth)
            ]
        )
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                if layer.bias is not None:  # always: built with a bias
                    nn.init.constant_(layer.bias, 0)

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Old torchvision checkpoints (e.g. maskrcnn_resnet50_fpn COCO v1) store the single conv
        # as "conv.weight"; map it to the current "conv.0.0.weight" layout.
        for kind in ("weight", "bias"):
            old = f"{prefix}conv.{kind}"
            if old in state_dict:
                state_dict[f"{prefix}conv.0.0.{kind}"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """
        Args:
            features: per level Tensor[B, C, H_l, W_l].

        Returns:
            (objectness, deltas): per level Tensor[B, A, H_l, W_l] logits and
            Tensor[B, 4*A, H_l, W_l] box deltas.
        """
        logits, deltas = [], []
        for feature in features:
            t = self.conv(feature)
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


def _flatten_levels(per_level: list[Tensor], channels: int) -> Tensor:
    """[B, A*channels, H, W] per level -> Tensor[B, sum_l H_l*W_l*A, channels] in anchor order (y, x, a)."""
    flat = []
    for t in per_level:
        b, _, h, w = t.shape
        flat.append(t.view(b, -1, channels, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, channels))
    return torch.cat(flat, dim=1)


class RegionProposalNetwork(nn.Module):
    """RPN with torchvision-equal proposal selection. Only ``head`` holds parameters.

    Args:
        fg_iou_thresh / bg_iou_thresh: anchor IoU >= fg is positive, < bg negative, between ignored
            (plus every gt's best anchor(s) are positive).
        batch_size_per_image / positive_fraction: anchor sampling for the losses;
            ``batch_size_per_image=None`` uses every non-ignored anchor.
        pre_nms_top_n_*: top-scoring anchors kept PER LEVEL before NMS; post_nms_top_n_*: proposals
            kept per image after NMS (``*_train`` in training mode, ``*_test`` in eval mode).
        nms_thresh: IoU threshold of the per-level NMS; score_thresh: min sigmoid objectness;
        min_size: proposals with a side smaller than this (pixels) are dropped.
    """

    def __init__(
        self,
        in_channels: int = 256,
        anchor_sizes: tuple[tuple[int, ...], ...] = ((32,), (64,), (128,), (256,), (512,)),
        aspect_ratios: tuple[tuple[float, ...], ...] = ((0.5, 1.0, 2.0),) * 5,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        batch_size_per_image: int | None = 256,
        positive_fraction: float = 0.5,
        pre_nms_top_n_train: int = 2000,
        pre_nms_top_n_test: int = 1000,
        post_nms_top_n_train: int = 2000,
        post_nms_top_n_test: int = 1000,
        nms_thresh: float = 0.7,
        score_thresh: float = 0.0,
        min_size: float = 1e-3,
    ) -> None:
        super().__init__()
        self.anchor_generator = AnchorGenerator(anchor_sizes, aspect_ratios)
        self.head = RPNHead(in_channels, self.anchor_generator.num_anchors_per_location())
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.pre_nms_top_n = {True: pre_nms_top_n_train, False: pre_nms_top_n_test}
        self.post_nms_top_n = {True: post_nms_top_n_train, False: post_nms_top_n_test}
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_size = min_size

    def forward(
        self, batch: ImageBatch, features: dict[str, Tensor], targets: list[Target] | None = None
    ) -> tuple[list[Tensor], RPNLossInputs | None]:
        """
        Args:
            batch: the padded images (only sizes are used).
            features: FPN levels in order, each Tensor[B, C, H_l, W_l].
            targets: one validated ``Target`` per image (``batch`` pixels; "boxes" and the optional
                "crowd_boxes" are read); when given, loss inputs are computed (in train or eval mode).

        Returns:
            proposals: per image Tensor[P_i, 4] float xyxy (detached), sorted by score per level
                group as torchvision's batched NMS returns them.
            loss_inputs: ``RPNLossInputs``, or None without targets.
        """
        feats = list(features.values())
        num_images = batch.tensors.shape[0]
        if targets is not None and len(targets) != num_images:
            raise ValueError(f"{type(self).__name__}: {num_images} images but {len(targets)} targets")
        logits_per_level, deltas_per_level = self.head(feats)
        anchors = self.anchor_generator(tuple(batch.tensors.shape[-2:]), feats)
        num_per_level = [int(t.shape[1] * t.shape[2] * t.shape[3]) for t in logits_per_level]

        objectness = _flatten_levels(logits_per_level, 1).squeeze(-1)  # [B, A_total]
        deltas = _flatten_levels(deltas_per_level, 4)  # [B, A_total, 4]
        # Proposals do not backprop into the RPN deltas (Faster R-CNN approximate joint training).
        proposals = self.box_coder.decode(deltas.detach().reshape(-1, 4), anchors.repeat(num_images, 1))
        proposals = proposals.view(num_images, -1, 4)
        boxes = self._select_proposals(proposals, objectness.detach(), batch.image_sizes, num_per_level)

        loss_inputs = None
        if targets is not None:
            loss_inputs = self._loss_inputs(anchors, objectness, deltas, targets)
        return boxes, loss_inputs

    def _select_proposals(
        self, proposals: Tensor, objectness: Tensor, image_sizes: list[tuple[int, int]], num_per_level: list[int]
    ) -> list[Tensor]:
        """Per-level top-k, clip, drop tiny / low-score boxes, per-level NMS, keep post_nms_top_n.

        Args:
            proposals: Tensor[B, A_total, 4]; objectness: Tensor[B, A_total] logits (detached).
        """
        device = proposals.device
        pre_n, post_n = self.pre_nms_top_n[self.training], self.post_nms_top_n[self.training]
        top_parts: list[Tensor] = []
        level_parts: list[Tensor] = []
        offset = 0
        for level, scores in enumerate(objectness.split(num_per_level, dim=1)):
            k = min(pre_n, scores.shape[1])
            top_parts.append(scores.topk(k, dim=1).indices + offset)
            level_parts.append(torch.full((k,), level, dtype=torch.int64, device=device))
            offset += scores.shape[1]
        top_idx = torch.cat(top_parts, dim=1)
        levels = torch.cat(level_parts)
        rows = torch.arange(proposals.shape[0], device=device)[:, None]
        scores = torch.sigmoid(objectness[rows, top_idx])
        proposals = proposals[rows, top_idx]

        out = []
        for boxes, probs, image_size in zip(proposals, scores, image_sizes, strict=True):
            boxes = clip_boxes_to_image(boxes, image_size)
            keep = remove_small_boxes(boxes, self.min_size)
            boxes, probs, lvl = boxes[keep], probs[keep], levels[keep]
            keep = torch.where(probs >= self.score_thresh)[0]
            boxes, probs, lvl = boxes[keep], probs[keep], lvl[keep]
            keep = batched_nms(boxes, probs, lvl, self.nms_thresh)[:post_n]
            out.append(boxes[keep])
        return out

    def _label_anchors(self, anchors: Tensor, target: Target) -> tuple[Tensor, Tensor]:
        """
        Returns:
            labels: Tensor[A_total] float32, 1 fg / 0 bg / -1 ignored (between thresholds or on crowd).
            matched_idx: Tensor[A_total] int64 gt index per anchor (clamped to >= 0; meaningless for
                non-positives; all 0 when the image has no gt).
        """
        gt_boxes = target["boxes"]
        if gt_boxes.numel() == 0:
            labels = torch.zeros(anchors.shape[0], dtype=torch.float32, device=anchors.device)
            matched_idx = torch.zeros(anchors.shape[0], dtype=torch.int64, device=anchors.device)
        else:
            matched = self.matcher(box_iou(gt_boxes, anchors))
            labels = (matched >= 0).to(torch.float32)
            labels[matched == Matcher.BETWEEN] = -1.0
            matched_idx = matched.clamp(min=0)
        labels = ignore_crowd_matches(labels, anchors, target.get("crowd_boxes"))
        return labels, matched_idx

    def _loss_inputs(self, anchors: Tensor, objectness: Tensor, deltas: Tensor, targets: list[Target]) -> RPNLossInputs:
        """Label anchors, sample them, and gather predictions/targets of the sampled anchors.

        Order of the sampled anchors (== torchvision): positives of all images (image-major,
        ascending anchor index), then negatives likewise.
        """
        num_anchors = anchors.shape[0]
        labels, matched = zip(*(self._label_anchors(anchors, t) for t in targets), strict=True)
        pos_per_image, neg_per_image = self.sampler(list(labels))

        pos = torch.cat([p + i * num_anchors for i, p in enumerate(pos_per_image)])
        neg = torch.cat([n + i * num_anchors for i, n in enumerate(neg_per_image)])
        sampled = torch.cat([pos, neg])
        all_labels = torch.cat(labels)

        pos_anchors = anchors[pos % num_anchors] if pos.numel() else anchors.new_zeros((0, 4))
        gt_boxes = torch.cat(
            [
                t["boxes"][m[p]].to(anchors.dtype) if p.numel() else anchors.new_zeros((0, 4))
                for t, m, p in zip(targets, matched, pos_per_image, strict=True)
            ]
        )
        box_deltas = deltas.reshape(-1, 4)[pos]
        return {
            "objectness": objectness.reshape(-1)[sampled],
            "labels": all_labels[sampled],
            "box_deltas": box_deltas,
            "box_targets": self.box_coder.encode(gt_boxes, pos_anchors),
            "pred_boxes": self.box_coder.decode(box_deltas, pos_anchors).reshape(-1, 4),
            "gt_boxes": gt_boxes,
        }
