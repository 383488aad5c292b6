"""RoI classification losses. Input: ``RoILossInputs`` (``modeling/structures.py``, the single
specification of its tensors); they read ``class_logits`` and ``labels``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskrcnn.losses._checks import require_ndim, require_tensors
from maskrcnn.losses.focal import softmax_focal_loss
from maskrcnn.modeling.structures import RoILossInputs


def _classifier_inputs(roi: Mapping[str, object], where: str) -> tuple[Tensor, Tensor]:
    logits, labels = require_tensors(roi, ("class_logits", "labels"), where)
    require_ndim(logits, 2, "class_logits", where)
    require_ndim(labels, 1, "labels", where)
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{where}: class_logits has {logits.shape[0]} rows but labels has {labels.shape[0]}")
    if labels.dtype != torch.int64:
        raise TypeError(f"{where}: labels must be int64, got {labels.dtype}")
    return logits, labels


class CrossEntropyClassifierLoss(nn.Module):
    """Softmax cross-entropy averaged over the R sampled RoIs (torchvision's ``fastrcnn_loss``).

    Args:
        label_smoothing: passed to ``F.cross_entropy``; 0 = torchvision.

    R = 0 gives ``class_logits.sum() * 0`` (torchvision would return NaN).
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"{type(self).__name__}: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, roi: RoILossInputs) -> Tensor:
        """roi: the "roi" dict. Returns a float32 scalar."""
        logits, labels = _classifier_inputs(roi, f"{type(self).__name__}['roi']")
        if logits.shape[0] == 0:
            return logits.float().sum() * 0.0
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"


class FocalClassifierLoss(nn.Module):
    """Softmax focal loss over the sampled RoIs.

    Args:
        gamma: focusing exponent >= 0.
        alpha: None | float (foreground weight, background gets 1 - alpha) | list of K+1
            per-class weights (a Hydra list is fine; stored as a buffer so it follows ``.to()``).
        normalizer: "mean" (default) divides the summed loss by R, so ``gamma=0, alpha=None`` is
            exactly ``CrossEntropyClassifierLoss``; "num_foreground" divides by
            ``max(1, #RoIs with label > 0)`` (RetinaNet-style, for ``batch_size_per_image: null``).
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | Tensor | None = None,
        normalizer: str = "mean",
    ) -> None:
        super().__init__()
        if normalizer not in ("mean", "num_foreground"):
            raise ValueError(
                f"{type(self).__name__}: normalizer must be 'mean' or 'num_foreground', got {normalizer!r}"
            )
        self.gamma = float(gamma)
        self.normalizer = normalizer
        self.alpha_scalar: float | None = None
        self.alpha_per_class: Tensor | None
        if alpha is None or isinstance(alpha, (int, float)):
            self.alpha_scalar = None if alpha is None else float(alpha)
            self.register_buffer("alpha_per_class", None, persistent=False)
        else:
            # Not persistent: checkpoints stay loadable when the loss config changes.
            alpha_tensor = torch.as_tensor(list(alpha), dtype=torch.float32)
            self.register_buffer("alpha_per_class", alpha_tensor, persistent=False)

    def forward(self, roi: RoILossInputs) -> Tensor:
        """roi: the "roi" dict. Returns a float32 scalar."""
        logits, labels = _classifier_inputs(roi, f"{type(self).__name__}['roi']")
        alpha = self.alpha_per_class if self.alpha_per_class is not None else self.alpha_scalar
        if self.normalizer == "mean":
            return softmax_focal_loss(logits, labels, self.gamma, alpha, reduction="mean")
        total = softmax_focal_loss(logits, labels, self.gamma, alpha, reduction="sum")
        return total / (labels > 0).sum().clamp_min(1)

    def extra_repr(self) -> str:
        alpha = self.alpha_per_class.tolist() if self.alpha_per_class is not None else self.alpha_scalar
        return f"gamma={self.gamma}, alpha={alpha}, normalizer={self.normalizer!r}"
