"""Box and mask heads of Mask R-CNN.

Module and parameter names mirror torchvision (``fc6``/``fc7``, ``cls_score``/``bbox_pred``,
``mask_head.{i}.0``, ``conv5_mask``/``mask_fcn_logits``) so torchvision state dicts load as is.

Initialisation of the two PREDICTORS follows detectron2, not torchvision (loading a state dict
overwrites it either way, so checkpoints give identical results). torchvision initialises the
``K+1``-channel 1x1 mask-logit conv with Kaiming fan-out, i.e. std sqrt(2 / (K + 1)): with one or
three classes the initial mask logits are around +-10 and ``loss_mask`` starts at 4-11 instead of
ln 2 = 0.69, which made from-scratch runs on small datasets diverge. Small normal weights and zero
biases make a fresh predictor start at the "know nothing" losses: mask 0.69, classifier ln(K+1).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn


class TwoMLPHead(nn.Module):
    """Two fully connected layers on the flattened pooled RoI features (FPN box head).

    Args:
        in_channels: C * P * Q of the pooled features (256 * 7 * 7 for ResNet-FPN).
        representation_size: hidden width (1024).
    """

    def __init__(self, in_channels: int, representation_size: int = 1024) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: Tensor) -> Tensor:
        """x: Tensor[R, C, P, Q] pooled features -> Tensor[R, representation_size]."""
        x = F.relu(self.fc6(x.flatten(start_dim=1)))
        return F.relu(self.fc7(x))


class FastRCNNPredictor(nn.Module):
    """Classification logits and per-class box deltas.

    Args:
        in_channels: width of the box head output.
        num_classes: number of outputs INCLUDING background (foreground classes + 1).
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)
        reset_box_predictor(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: Tensor[R, D] -> (class_logits Tensor[R, num_classes], box_deltas Tensor[R, 4 * num_classes])."""
        if x.dim() == 4 and tuple(x.shape[2:]) != (1, 1):
            raise ValueError(f"FastRCNNPredictor expects [R, D] or [R, D, 1, 1] input, got {tuple(x.shape)}")
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


class MaskRCNNHeads(nn.Sequential):
    """Stack of 3x3 conv + ReLU blocks on the pooled mask features.

    Each block is ``nn.Sequential(conv, relu)`` so parameter keys are ``{i}.0.weight`` exactly as
    torchvision's ``Conv2dNormActivation`` blocks without normalisation.

    Args:
        in_channels: channels of the pooled features (FPN out_channels, 256).
        layers: output channels of each conv block ((256, 256, 256, 256)).
        dilation: dilation (and padding) of the 3x3 convs.
    """

    def __init__(self, in_channels: int, layers: Sequence[int] = (256, 256, 256, 256), dilation: int = 1) -> None:
        blocks = []
        channels = in_channels
        for width in layers:
            conv = nn.Conv2d(channels, width, kernel_size=3, stride=1, padding=dilation, dilation=dilation)
            blocks.append(nn.Sequential(conv, nn.ReLU(inplace=True)))
            channels = width
        super().__init__(*blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:  # always: built with a bias
                    nn.init.zeros_(module.bias)

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Old torchvision checkpoints (e.g. the maskrcnn_resnet50_fpn COCO v1 file) name the convs
        # "mask_fcn{i+1}"; map them to the current "{i}.0" layout.
        for i in range(len(self)):
            for kind in ("weight", "bias"):
                old = f"{prefix}mask_fcn{i + 1}.{kind}"
                if old in state_dict:
                    state_dict[f"{prefix}{i}.0.{kind}"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class MaskRCNNPredictor(nn.Sequential):
    """2x upsampling transposed conv + ReLU, then one 1x1 conv giving per-class mask logits.

    Args:
        in_channels: channels of the mask head output (256).
        dim_reduced: channels after the transposed conv (256).
        num_classes: number of outputs INCLUDING background.
    """

    conv5_mask: nn.ConvTranspose2d
    relu: nn.ReLU
    mask_fcn_logits: nn.Conv2d

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int) -> None:
        super().__init__(
            OrderedDict(
                [
                    ("conv5_mask", nn.ConvTranspose2d(in_channels, dim_reduced, 2, 2, 0)),
                    ("relu", nn.ReLU(inplace=True)),
                    ("mask_fcn_logits", nn.Conv2d(dim_reduced, num_classes, 1, 1, 0)),
                ]
            )
        )
        nn.init.kaiming_normal_(self.conv5_mask.weight, mode="fan_out", nonlinearity="relu")
        if self.conv5_mask.bias is not None:  # always: built with a bias
            nn.init.zeros_(self.conv5_mask.bias)
        reset_mask_logits(self)


def reset_box_predictor(predictor: FastRCNNPredictor) -> None:
    """detectron2's FastRCNNOutputLayers init: class logits ~ N(0, 0.01), box deltas ~ N(0, 0.001)."""
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    nn.init.zeros_(predictor.cls_score.bias)
    nn.init.zeros_(predictor.bbox_pred.bias)


def reset_mask_logits(predictor: MaskRCNNPredictor) -> None:
    """detectron2's mask predictor init: logits ~ N(0, 0.001), zero bias (sigmoid 0.5 everywhere)."""
    nn.init.normal_(predictor.mask_fcn_logits.weight, std=0.001)
    if predictor.mask_fcn_logits.bias is not None:  # a MaskRCNNPredictor's has one
        nn.init.zeros_(predictor.mask_fcn_logits.bias)


PREDICTOR_INITS = ("detectron2", "torchvision")


def use_torchvision_predictor_init(box_predictor: FastRCNNPredictor, mask_predictor: MaskRCNNPredictor) -> None:
    """Re-draw both predictors as torchvision initialises them (``predictor_init: torchvision``).

    torchvision keeps nn.Linear's default init for the box predictor and draws every mask
    predictor weight (the transposed conv and the logits) from kaiming-normal (fan_out, relu),
    leaving the biases at PyTorch's default uniform init; detectron2's init (the default here)
    starts the logits near zero instead (see reset_box_predictor, reset_mask_logits).
    """
    box_predictor.cls_score.reset_parameters()
    box_predictor.bbox_pred.reset_parameters()
    # torchvision's order of draws: both layers' default init, then kaiming on each weight.
    layers = (mask_predictor.conv5_mask, mask_predictor.mask_fcn_logits)
    for layer in layers:
        layer.reset_parameters()
    for layer in layers:
        nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
