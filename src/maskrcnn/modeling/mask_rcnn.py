"""Mask R-CNN: transform -> backbone -> RPN -> RoI heads -> (loss inputs, detections).

Submodule names (``transform``, ``backbone``, ``rpn``, ``roi_heads``) equal torchvision's so the
state_dict keys are torchvision's. The network never computes losses: it returns LossInputs
(``structures.LossInputs``) for ``maskrcnn.losses``.
"""

from __future__ import annotations

from torch import Tensor, nn

from maskrcnn.modeling.postprocess import paste_masks
from maskrcnn.modeling.structures import MASK_FORMATS, Detection, MaskRCNNOutput, RoIDetection, Target, validate_targets
from maskrcnn.modeling.transform import map_boxes_to_original


class MaskRCNN(nn.Module):
    """Mask R-CNN assembled from its parts.

    Args:
        transform: ImageTransform (normalise, resize, pad).
        backbone: features Tensor[B,3,H,W] -> OrderedDict '0','1','2','3','pool'.
        rpn: RegionProposalNetwork.
        roi_heads: RoIHeads.
        mask_format: how eval masks are returned: "prob" (Tensor[D,1,H,W] float probabilities,
            torchvision-compatible), "binary" (Tensor[D,1,H,W] bool, > MASK_THRESHOLD) or "rle" (list of
            COCO RLE dicts with str counts).
        paste_aligned: paste masks exactly over their boxes (``postprocess.paste_masks``); False
            is torchvision's integer-box paste. Goes with ``roi_align.aligned`` (build.py).
    """

    def __init__(
        self,
        transform: nn.Module,
        backbone: nn.Module,
        rpn: nn.Module,
        roi_heads: nn.Module,
        mask_format: str = "prob",
        paste_aligned: bool = False,
    ) -> None:
        super().__init__()
        if mask_format not in MASK_FORMATS:
            raise ValueError(f"{type(self).__name__}: mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.mask_format = mask_format
        self.paste_aligned = paste_aligned

    def forward(
        self, images: list[Tensor], targets: list[Target] | None = None, mask_format: str | None = None
    ) -> MaskRCNNOutput:
        """
        Args:
            images: list of Tensor[3, H_i, W_i] float32 in [0, 1], RGB (sizes may differ).
            targets: one ``Target`` per image, in the pixels of ``images``; required in training,
                optional in eval (then validation loss inputs are returned too). Checked here, once,
                by ``validate_targets``.
            mask_format: this call's mask format instead of ``self.mask_format`` (e.g. "rle" where
                only a COCO evaluator reads the masks: one mask at a time is pasted, never a float
                [D, 1, H, W] tensor of the full image); ``paste_masks`` rejects an unknown one.

        Returns:
            training: {"loss_inputs": LossInputs}
            eval: {"detections": list[Detection]} in the pixels of ``images``; eval with targets: both keys.
        """
        name = type(self).__name__
        if not isinstance(images, (list, tuple)) or len(images) == 0:
            raise ValueError(f"{name}: images must be a non-empty list of Tensor[3, H, W]")
        if self.training and targets is None:
            raise ValueError(f"{name}: targets are required in training mode (call model.eval() for inference)")
        if targets is not None:
            validate_targets(list(images), list(targets), where=name)
        original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]

        batch, targets = self.transform(list(images), None if targets is None else list(targets))
        features = self.backbone(batch.tensors)
        proposals, rpn_inputs = self.rpn(batch, features, targets)
        detections, roi_inputs = self.roi_heads(features, proposals, batch.image_sizes, targets)

        out: MaskRCNNOutput = {}
        if targets is not None:
            out["loss_inputs"] = {"rpn": rpn_inputs, "roi": roi_inputs["roi"], "mask": roi_inputs["mask"]}
        if not self.training:
            fmt = self.mask_format if mask_format is None else mask_format
            out["detections"] = self._to_original(detections, batch.image_sizes, original_sizes, fmt)
        return out

    def _to_original(
        self,
        detections: list[RoIDetection],
        resized_sizes: list[tuple[int, int]],
        original_sizes: list[tuple[int, int]],
        mask_format: str,
    ) -> list[Detection]:
        """Map boxes back to input-image pixels and paste the M x M masks into full images."""
        results: list[Detection] = []
        for det, resized, original in zip(detections, resized_sizes, original_sizes, strict=True):
            boxes = map_boxes_to_original(det["boxes"], resized, original)
            results.append(
                {
                    "boxes": boxes,
                    "labels": det["labels"],
                    "scores": det["scores"],
                    "masks": paste_masks(
                        det["masks"], boxes, original, mask_format=mask_format, aligned=self.paste_aligned
                    ),
                }
            )
        return results
