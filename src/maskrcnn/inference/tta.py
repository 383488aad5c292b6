"""Test-time augmentation (TTA): a MaskRCNN run on flipped and rescaled views of each image, merged.

Network, views and merge are kept apart (as DETR keeps network and post-processing apart): the
network is the trained MaskRCNN, unchanged; ``TestTimeAugmentation`` runs its stages on every view
and maps the results back to the input image; ``merge_detections`` and ``average_masks`` are the
merge, plain functions of tensors. Per batch, as detectron2's ``GeneralizedRCNNWithTTA``:

1. Every view (``TTAView``: a shortest-edge size with its longest-edge cap, flipped or not) runs
   transform -> backbone -> RPN -> RoI heads. Its boxes go back to input-image pixels: scaled by
   the view's resize, then un-flipped (``flip_boxes``: x1 = W - x2', x2 = W - x1').
2. The detections of all views are merged by class-wise NMS with the model's own ``nms_thresh``
   and ``detections_per_img`` (``merge_detections``). NMS rather than box voting: it is the rule
   the model applies within one view, so a single view passes through unchanged; every kept box
   and score is one view's prediction, so scores stay the model's class probabilities (voting
   would average boxes, and leave open which score the average gets).
3. The mask of every merged box is predicted on every view (the box mapped into the view, the
   mask head run on that view's features), un-flipped and averaged (``average_masks``), then
   pasted like the model's own masks and thresholded at 0.5 (``MASK_THRESHOLD``). Pasting is
   linear in the M x M probabilities and every view's mask belongs to the same box in the input
   image, so this equals averaging the pasted full-image probability maps. The view a box comes
   from reuses the mask it already predicted for that box.

The FPN features of every view of a batch are held until step 3: memory grows with views x batch.
Flipping is exact for the half-pixel-correct geometry (``model.roi_align.aligned=true``, the
configs' default); torchvision's legacy RoIAlign samples half a pixel off, so there a flipped view
sees its boxes shifted by half a pixel.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from maskrcnn.modeling.postprocess import paste_masks
from maskrcnn.modeling.structures import Detection, RoIDetection
from maskrcnn.modeling.transform import ImageTransform, map_boxes_to_original


@dataclass(frozen=True)
class TTAView:
    """One view of an image: flipped left-right when ``flip``, then resized as the model resizes,
    to a shortest edge of ``min_size`` px with the longest edge at most ``max_size`` px."""

    min_size: int
    max_size: int
    flip: bool = False

    def describe(self) -> str:
        return f"{self.min_size} px" + (" flipped" if self.flip else "")


def flip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Mirror boxes left-right in an image ``width`` pixels wide (x -> width - x; its own inverse).

    Args:
        boxes: Tensor[N, 4] float32, xyxy, absolute pixels.

    Returns:
        Tensor[N, 4] float32, xyxy: (width - x2, y1, width - x1, y2).
    """
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((width - x2, y1, width - x1, y2), dim=1)


def merge_detections(boxes: Tensor, scores: Tensor, labels: Tensor, nms_thresh: float, max_detections: int) -> Tensor:
    """Which of one image's detections, all views together, to keep: class-wise NMS, best first.

    Args:
        boxes: Tensor[N, 4] float32, xyxy, absolute pixels of the input image.
        scores: Tensor[N] float32 class probabilities.
        labels: Tensor[N] int64 in 1..K; boxes of different classes never suppress each other.
        nms_thresh: a box is dropped when its IoU with a better box of its class is > nms_thresh.
        max_detections: at most this many are kept.

    Returns:
        Tensor[D] int64 indices into the inputs, by decreasing score.
    """
    return batched_nms(boxes, scores, labels, nms_thresh)[:max_detections]


def average_masks(masks: Sequence[Tensor], flipped: Sequence[bool]) -> Tensor:
    """Mean over views of the masks of the same boxes, each view's mask un-flipped first.

    Args:
        masks: per view Tensor[D, 1, M, M] float32 probabilities, relative to the box as that view
            sees it (a flipped view's mask is the mirror image of the input's).
        flipped: per view, whether the view was flipped.

    Returns:
        Tensor[D, 1, M, M] float32 mean probabilities, relative to the box in the input image.
    """
    return torch.stack([m.flip(-1) if f else m for m, f in zip(masks, flipped, strict=True)]).mean(dim=0)


@dataclass
class TTACost:
    """The run-time cost of TTA against the network without it, both timed in this run: the
    network's plain view (the model's own size, not flipped) is timed where it is one of the views,
    or else run once more on the first batch for the timing alone."""

    views: list[TTAView]
    tta_seconds: float = 0.0
    tta_images: int = 0
    plain_seconds: float = 0.0
    plain_images: int = 0

    def line(self) -> str:
        """``TTA: 4 views per image (64 px, 64 px flipped, ...), 3.8x the time without TTA (5 images)``."""
        head = f"TTA: {len(self.views)} views per image ({', '.join(v.describe() for v in self.views)})"
        if not (self.tta_images and self.plain_images and self.plain_seconds > 0):
            return f"{head}; no image was run"
        ratio = (self.tta_seconds / self.tta_images) / (self.plain_seconds / self.plain_images)
        images = f"{self.tta_images} image" + ("s" if self.tta_images != 1 else "")
        return f"{head}, {ratio:.1f}x the time without TTA ({images})"


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the GPU's queued work belongs to the time measured
    return time.perf_counter()


@dataclass
class _ViewRun:
    """What one view gave for the batch: features and sizes for step 3, detections in view pixels."""

    view: TTAView
    features: dict[str, Tensor]
    image_sizes: list[tuple[int, int]]  # (H, W) after the view's resize
    detections: list[RoIDetection]  # boxes in the view's pixels; masks of their own boxes


@dataclass
class _Merged:
    """One image's merged detections (input-image pixels) and where each came from."""

    boxes: Tensor  # Tensor[D, 4] float32, xyxy, absolute pixels of the input image
    scores: Tensor  # Tensor[D] float32
    labels: Tensor  # Tensor[D] int64
    view: Tensor  # Tensor[D] int64, the index of the view that predicted it
    index: Tensor  # Tensor[D] int64, its index among that view's detections


class TestTimeAugmentation:
    """Detections of ``net`` merged over ``views`` of every image (see the module docstring).

    Args:
        net: a MaskRCNN in eval mode, or its inference copy (``optimize_for_inference``): its
            ``transform`` (an ImageTransform, whose normalisation and padding every view keeps),
            ``backbone``, ``rpn`` and ``roi_heads`` (``nms_thresh``, ``detections_per_img``,
            ``mask_probs``) run view by view; ``mask_format`` and ``paste_aligned`` shape the masks.
        views: the views of every image, at least one.

    ``cost`` accumulates the time spent, for :meth:`TTACost.line`.
    """

    __test__ = False  # a class named Test*, not a pytest test class

    def __init__(self, net: nn.Module, views: Sequence[TTAView]) -> None:
        if not views:
            raise ValueError("TestTimeAugmentation: views must not be empty")
        self.net: Any = net  # a MaskRCNN: transform, backbone, rpn, roi_heads
        self.views = list(views)
        transform: Any = net.transform  # an ImageTransform
        self.plain = TTAView(int(transform.min_size[-1]), int(transform.max_size))
        self.cost = TTACost(self.views)

    def __call__(self, images: list[Tensor], mask_format: str | None = None) -> list[Detection]:
        """As ``MaskRCNN.forward(images, mask_format=mask_format)["detections"]``: per image, in the
        pixels of ``images``, masks pasted in ``mask_format`` (default ``net.mask_format``)."""
        mask_format = self.net.mask_format if mask_format is None else mask_format
        results: list[Detection] = []
        for image, det in zip(images, self.detect(images), strict=True):
            size = (int(image.shape[-2]), int(image.shape[-1]))
            masks = paste_masks(
                det["masks"], det["boxes"], size, mask_format=mask_format, aligned=self.net.paste_aligned
            )
            results.append({"boxes": det["boxes"], "labels": det["labels"], "scores": det["scores"], "masks": masks})
        return results

    @torch.no_grad()
    def detect(self, images: list[Tensor]) -> list[RoIDetection]:
        """Merged detections before pasting.

        Args:
            images: list of Tensor[3, H_i, W_i] float32 in [0, 1], RGB.

        Returns:
            per image an ``RoIDetection`` whose boxes are in the pixels of ``images`` (not of a
            resized image) and whose masks are the views' mean M x M probabilities.
        """
        if self.net.training:
            raise ValueError("TestTimeAugmentation: the network must be in eval mode (net.eval())")
        device = images[0].device
        start = _clock(device)
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        runs = []
        for view in self.views:
            view_start = _clock(device)
            runs.append(self._run(view, images))
            if view == self.plain:
                self._add_plain(_clock(device) - view_start, len(images))
        merged = [self._merge(runs, i, size) for i, size in enumerate(sizes)]
        masks = average_masks(
            [self._view_masks(run, v, merged, sizes) for v, run in enumerate(runs)], [run.view.flip for run in runs]
        )
        self.cost.tta_seconds += _clock(device) - start
        self.cost.tta_images += len(images)
        del runs  # the views' features
        if self.cost.plain_images == 0:  # the plain view is not one of the views: timed once, apart
            plain_start = _clock(device)
            self._run(self.plain, images)
            self._add_plain(_clock(device) - plain_start, len(images))
        per_image = masks.split([m.boxes.shape[0] for m in merged])
        return [
            {"boxes": m.boxes, "labels": m.labels, "scores": m.scores, "masks": p}
            for m, p in zip(merged, per_image, strict=True)
        ]

    def _add_plain(self, seconds: float, images: int) -> None:
        self.cost.plain_seconds += seconds
        self.cost.plain_images += images

    def _run(self, view: TTAView, images: list[Tensor]) -> _ViewRun:
        """The network's inference stages on the view of ``images`` (as ``MaskRCNN.forward``, unpasted)."""
        net, given = self.net, self.net.transform
        transform = ImageTransform(
            view.min_size, view.max_size, given.image_mean, given.image_std, given.size_divisible
        )
        batch, _ = transform.eval()([im.flip(-1) for im in images] if view.flip else images, None)
        features = net.backbone(batch.tensors)
        proposals, _ = net.rpn(batch, features, None)
        detections, _ = net.roi_heads(features, proposals, batch.image_sizes, None)
        return _ViewRun(view, features, list(batch.image_sizes), detections)

    def _merge(self, runs: list[_ViewRun], i: int, size: tuple[int, int]) -> _Merged:
        """Image ``i``'s detections of every view in input pixels, merged by ``merge_detections``."""
        boxes, scores, labels, view, index = [], [], [], [], []
        for v, run in enumerate(runs):
            det = run.detections[i]
            boxes.append(self._to_input(det["boxes"], run.view, run.image_sizes[i], size))
            scores.append(det["scores"])
            labels.append(det["labels"])
            view.append(torch.full_like(det["labels"], v))
            index.append(torch.arange(det["labels"].shape[0], device=det["labels"].device))
        all_boxes, all_scores, all_labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        heads = self.net.roi_heads
        keep = merge_detections(all_boxes, all_scores, all_labels, heads.nms_thresh, heads.detections_per_img)
        return _Merged(
            all_boxes[keep], all_scores[keep], all_labels[keep], torch.cat(view)[keep], torch.cat(index)[keep]
        )

    def _view_masks(self, run: _ViewRun, v: int, merged: list[_Merged], sizes: list[tuple[int, int]]) -> Tensor:
        """Tensor[sum D_i, 1, M, M]: view ``v``'s mask of every merged box of the batch, in the view's
        orientation; the boxes it predicted itself keep their masks, the mask head runs on the others."""
        own = [m.view == v for m in merged]
        other_boxes = [
            self._to_view(m.boxes[~o], run.view, resized, size)
            for m, o, resized, size in zip(merged, own, run.image_sizes, sizes, strict=True)
        ]
        other_labels = torch.cat([m.labels[~o] for m, o in zip(merged, own, strict=True)])
        predicted: list[Tensor] = []  # per image, once the mask head has run
        if other_labels.numel() > 0:
            probs = self.net.roi_heads.mask_probs(run.features, other_boxes, other_labels, run.image_sizes)
            predicted = list(probs.split([b.shape[0] for b in other_boxes]))
        size = int(self.net.roi_heads.mask_size)
        masks = []
        for i, (m, o, det) in enumerate(zip(merged, own, run.detections, strict=True)):
            image_masks = det["masks"].new_empty((m.boxes.shape[0], 1, size, size))
            image_masks[o] = det["masks"][m.index[o]]
            if predicted:
                image_masks[~o] = predicted[i]
            masks.append(image_masks)
        return torch.cat(masks)

    @staticmethod
    def _to_input(boxes: Tensor, view: TTAView, resized: tuple[int, int], size: tuple[int, int]) -> Tensor:
        """Boxes Tensor[N, 4] xyxy from the view's pixels (``resized``) to the input image's (``size``)."""
        boxes = map_boxes_to_original(boxes, resized, size)
        return flip_boxes(boxes, size[1]) if view.flip else boxes

    @staticmethod
    def _to_view(boxes: Tensor, view: TTAView, resized: tuple[int, int], size: tuple[int, int]) -> Tensor:
        """The inverse of ``_to_input``: input-image pixels to the view's."""
        boxes = flip_boxes(boxes, size[1]) if view.flip else boxes
        return map_boxes_to_original(boxes, size, resized)  # the same scaling, the other way
