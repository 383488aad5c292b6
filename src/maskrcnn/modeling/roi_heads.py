"""Second stage of Mask R-CNN: proposal sampling, box branch, mask branch, detection selection.

Matching, sampling (including its use of the global RNG), target encoding, mask-target
projection and the detection post-processing reproduce ``torchvision``'s ``RoIHeads`` step by
step, so a torchvision checkpoint gives the same detections and the same loss inputs. Losses
themselves are computed by ``maskrcnn.losses`` from the returned loss inputs.

Training reads as torchvision's steps: ``add_gt_proposals`` -> ``assign_targets_to_proposals`` ->
``subsample`` -> ``box_loss_inputs`` / ``mask_loss_inputs``. Targets reach this module already
checked by ``structures.validate_targets`` (called by ``MaskRCNN.forward``).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes, roi_align

from maskrcnn.modeling.box_coder import BoxCoder
from maskrcnn.modeling.matcher import BalancedSampler, Matcher, ignore_crowd_matches
from maskrcnn.modeling.structures import MaskLossInputs, RoIDetection, RoIHeadsLossInputs, RoILossInputs, Target


def project_masks_on_boxes(
    gt_masks: Tensor, boxes: Tensor, matched_idx: Tensor, size: int, aligned: bool = False
) -> Tensor:
    """Crop-and-resize each matched gt mask onto its RoI (torchvision's mask targets).

    Args:
        gt_masks: Tensor[G, H, W] uint8 {0, 1}, gt masks of one image (resized-image pixels).
        boxes: Tensor[Q, 4] float, xyxy, positive RoIs of that image.
        matched_idx: Tensor[Q] int64, gt index of each RoI.
        size: M, the mask-head output resolution.
        aligned: sample the mask where ``roi_align(aligned=True)`` samples the features. False
            (torchvision's targets) reads the mask half a pixel down-right of the RoI, which the
            legacy feature pooling shares but the aligned pooling does not.

    Returns:
        Tensor[Q, M, M] float32 in [0, 1] (soft at the edges: RoIAlign averages the binary mask).
    """
    rois = torch.cat([matched_idx.to(boxes)[:, None], boxes], dim=1)
    # adaptive-sampling RoIAlign at scale 1; aligned=False is exactly torchvision's targets
    return roi_align(gt_masks[:, None].to(rois), rois, (size, size), 1.0, aligned=aligned)[:, 0]


class RoIHeads(nn.Module):
    """Box and mask branches on top of the RPN proposals.

    Args:
        box_pooler, mask_pooler: MultiScaleRoIAlign (no parameters).
        box_head: pooled features -> Tensor[R, D] (TwoMLPHead).
        box_predictor: Tensor[R, D] -> (class_logits [R, K+1], box_deltas [R, 4(K+1)]).
        mask_head: pooled features -> Tensor[Q, C, m, m] (MaskRCNNHeads).
        mask_predictor: -> mask logits Tensor[Q, K+1, M, M] (MaskRCNNPredictor).
        fg_iou_thresh / bg_iou_thresh: proposals with IoU >= fg are foreground, < bg background.
        batch_size_per_image / positive_fraction: RoI sampling per image (None = keep every RoI).
        bbox_reg_weights: BoxCoder weights of the box branch.
        score_thresh, nms_thresh, detections_per_img: detection selection in eval.
        mask_size: M, resolution of the mask logits and of the mask targets.
        aligned_mask_targets: project gt masks with the half-pixel-correct RoIAlign; set it
            together with the poolers' ``aligned`` (build.py does).
    """

    def __init__(
        self,
        box_pooler: nn.Module,
        box_head: nn.Module,
        box_predictor: nn.Module,
        mask_pooler: nn.Module,
        mask_head: nn.Module,
        mask_predictor: nn.Module,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int | None = 512,
        positive_fraction: float = 0.25,
        bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        mask_size: int = 28,
        aligned_mask_targets: bool = False,
    ) -> None:
        super().__init__()
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.mask_pooler = mask_pooler
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.box_coder = BoxCoder(bbox_reg_weights)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.mask_size = mask_size
        self.aligned_mask_targets = aligned_mask_targets

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[Target] | None = None,
    ) -> tuple[list[RoIDetection], RoIHeadsLossInputs | None]:
        """
        Args:
            features: FPN levels name -> Tensor[B, C, h, w].
            proposals: per image Tensor[P_i, 4] float, xyxy, resized-image pixels (detached).
            image_sizes: per image (H, W) of the resized, unpadded image.
            targets: one validated ``Target`` per image, in resized-image pixels; required in training.

        Returns:
            detections: in eval mode one ``RoIDetection`` per image (resized-image pixels, M x M
                box-relative masks); an empty list in training mode.
            loss_inputs: ``RoIHeadsLossInputs`` ({"roi", "mask"}) when targets are given, else None.
        """
        name = type(self).__name__
        if len(proposals) != len(image_sizes):
            raise ValueError(f"{name}: {len(proposals)} proposal sets but {len(image_sizes)} image sizes")
        if self.training and targets is None:
            raise ValueError(f"{name}: targets are required in training mode")
        if targets is not None and len(targets) != len(proposals):
            raise ValueError(f"{name}: {len(proposals)} images but {len(targets)} targets")
        loss_inputs = None if targets is None else self._loss_inputs(features, proposals, image_sizes, targets)
        detections = [] if self.training else self._detect(features, proposals, image_sizes)
        return detections, loss_inputs

    # ----------------------------------------------------------------------------- training
    def _loss_inputs(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[Target],
    ) -> RoIHeadsLossInputs:
        proposals = self.add_gt_proposals(proposals, targets)
        labels, matched_idx = self.assign_targets_to_proposals(proposals, targets)
        sampled = self.subsample(labels)
        rois = [p[s] for p, s in zip(proposals, sampled, strict=True)]
        labels = [lab[s] for lab, s in zip(labels, sampled, strict=True)]
        matched_idx = [m[s] for m, s in zip(matched_idx, sampled, strict=True)]
        roi = self.box_loss_inputs(features, rois, labels, matched_idx, image_sizes, targets)
        mask = self.mask_loss_inputs(features, rois, labels, matched_idx, image_sizes, targets)
        return {"roi": roi, "mask": mask}

    def add_gt_proposals(self, proposals: list[Tensor], targets: list[Target]) -> list[Tensor]:
        """Append each image's gt boxes to its proposals, so every gt has a perfectly matching RoI.

        Returns:
            per image Tensor[P_i + N_i, 4], proposals first.
        """
        return [torch.cat([p, t["boxes"].to(p.dtype)]) for p, t in zip(proposals, targets, strict=True)]

    def assign_targets_to_proposals(
        self, proposals: list[Tensor], targets: list[Target]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Match every proposal to its best gt box.

        Returns:
            labels: per image Tensor[P_i] int64, gt class for fg, 0 bg, -1 ignored (between the
                thresholds, or background on a crowd region).
            matched_idx: per image Tensor[P_i] int64 gt index (clamped to >= 0; meaningless unless
                labels > 0).
        """
        all_labels, all_matched = [], []
        for boxes, target in zip(proposals, targets, strict=True):
            gt_boxes, gt_labels = target["boxes"].to(boxes.dtype), target["labels"]
            if gt_boxes.shape[0] == 0:
                matched_idx = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
                labels = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
            else:
                matched = self.matcher(box_iou(gt_boxes, boxes))
                matched_idx = matched.clamp(min=0)
                labels = gt_labels[matched_idx].clone()
                labels[matched == Matcher.BELOW_LOW] = 0
                labels[matched == Matcher.BETWEEN] = -1
            all_labels.append(ignore_crowd_matches(labels, boxes, target.get("crowd_boxes")))
            all_matched.append(matched_idx)
        return all_labels, all_matched

    def subsample(self, labels: list[Tensor]) -> list[Tensor]:
        """Sample fg/bg RoIs per image (draws from the global RNG exactly as torchvision does).

        Returns:
            per image Tensor[R_i] int64 indices of the sampled RoIs, ascending (torchvision's order).
        """
        pos_per_image, neg_per_image = self.sampler(labels)
        return [torch.cat([p, n]).sort().values for p, n in zip(pos_per_image, neg_per_image, strict=True)]

    def box_loss_inputs(
        self,
        features: dict[str, Tensor],
        rois: list[Tensor],
        labels: list[Tensor],
        matched_idx: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[Target],
    ) -> RoILossInputs:
        """Run the box branch on the sampled RoIs and pair its outputs with the encoded targets.

        Args:
            rois: per image Tensor[R_i, 4] sampled RoIs; labels, matched_idx: per image Tensor[R_i]
                int64 from ``assign_targets_to_proposals``, restricted to the sampled RoIs.
        """
        class_logits, box_deltas = self.box_predictor(self.box_head(self.box_pooler(features, rois, image_sizes)))
        all_labels = torch.cat(labels)
        pos = torch.where(all_labels > 0)[0]
        pos_deltas = box_deltas.reshape(box_deltas.shape[0], -1, 4)[pos, all_labels[pos]]
        pos_rois = torch.cat(rois)[pos]
        gt_boxes = torch.cat(
            [
                t["boxes"].to(r.dtype)[m[lab > 0]]
                for t, r, m, lab in zip(targets, rois, matched_idx, labels, strict=True)
            ]
        )
        return {
            "class_logits": class_logits,
            "labels": all_labels,
            "box_deltas": pos_deltas,
            "box_targets": self.box_coder.encode(gt_boxes, pos_rois),
            "pred_boxes": self.box_coder.decode(pos_deltas, pos_rois).reshape(-1, 4),
            "gt_boxes": gt_boxes,
        }

    def mask_loss_inputs(
        self,
        features: dict[str, Tensor],
        rois: list[Tensor],
        labels: list[Tensor],
        matched_idx: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[Target],
    ) -> MaskLossInputs:
        """Run the mask branch on the positive sampled RoIs and project their gt masks onto them.

        Args: as ``box_loss_inputs``.
        """
        mask_rois, mask_targets = [], []
        for r, m, lab, t in zip(rois, matched_idx, labels, targets, strict=True):
            keep = torch.where(lab > 0)[0]
            mask_rois.append(r[keep])
            if keep.numel() > 0:
                mask_targets.append(
                    project_masks_on_boxes(t["masks"], r[keep], m[keep], self.mask_size, self.aligned_mask_targets)
                )
            else:
                mask_targets.append(r.new_zeros((0, self.mask_size, self.mask_size)))
        pos_labels = torch.cat([lab[lab > 0] for lab in labels])
        mask_logits = self._mask_logits(features, mask_rois, image_sizes)
        return {
            "logits": mask_logits[torch.arange(pos_labels.shape[0], device=pos_labels.device), pos_labels],
            "targets": torch.cat(mask_targets),
        }

    def _mask_logits(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> Tensor:
        """Mask logits Tensor[sum Q_i, K+1, M, M] for the given per-image boxes."""
        logits = self.mask_predictor(self.mask_head(self.mask_pooler(features, boxes, image_sizes)))
        if logits.shape[-1] != self.mask_size:
            raise ValueError(
                f"{type(self).__name__}: mask predictor outputs {logits.shape[-1]}x{logits.shape[-1]} logits but "
                f"mask_size is {self.mask_size}; set mask_size = 2 * mask pooler output_size"
            )
        return logits

    # ---------------------------------------------------------------------------- inference
    def _detect(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[RoIDetection]:
        class_logits, box_deltas = self.box_predictor(self.box_head(self.box_pooler(features, proposals, image_sizes)))
        num_classes = class_logits.shape[-1]
        boxes_all = self.box_coder.decode(box_deltas, torch.cat(proposals))  # [R, K+1, 4]
        scores_all = F.softmax(class_logits, dim=-1)
        counts = [p.shape[0] for p in proposals]

        detections: list[dict[str, Tensor]] = []  # RoIDetection once "masks" is added below
        for boxes, scores, size in zip(boxes_all.split(counts), scores_all.split(counts), image_sizes, strict=True):
            boxes = clip_boxes_to_image(boxes, size)
            labels = torch.arange(num_classes, device=boxes.device).view(1, -1).expand_as(scores)
            # one candidate per (proposal, foreground class)
            boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            detections.append({"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]})

        probs = self.mask_probs(
            features, [d["boxes"] for d in detections], torch.cat([d["labels"] for d in detections]), image_sizes
        )
        for det, p in zip(detections, probs.split([d["boxes"].shape[0] for d in detections]), strict=True):
            det["masks"] = p
        return cast(list[RoIDetection], detections)

    def mask_probs(
        self, features: dict[str, Tensor], boxes: list[Tensor], labels: Tensor, image_sizes: list[tuple[int, int]]
    ) -> Tensor:
        """Tensor[sum D_i, 1, M, M] float32: mask probabilities of each box's own class, for per-image
        ``boxes`` Tensor[D_i, 4] (xyxy, resized-image pixels) and ``labels`` Tensor[sum D_i] int64."""
        mask_logits = self._mask_logits(features, boxes, image_sizes)
        # index before the sigmoid: the same values, for 1/(K+1) of the work
        return mask_logits[torch.arange(labels.shape[0], device=labels.device), labels][:, None].sigmoid()
