"""ResNet / ResNeXt trunk + FPN, with state_dict keys identical to torchvision's Mask R-CNN backbone.

Keys: ``body.conv1.*``, ``body.bn1.*``, ``body.layer{1..4}.*`` (torchvision ResNet naming),
``fpn.inner_blocks.{i}.0.*``, ``fpn.layer_blocks.{i}.0.*`` (torchvision FeaturePyramidNetwork).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from functools import partial

import torchvision
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from maskrcnn.modeling.weights_download import explain_download_errors

# name -> (torchvision constructor name, ImageNet weight enum name)
_TRUNKS: dict[str, tuple[str, str]] = {
    "resnet18": ("resnet18", "ResNet18_Weights"),
    "resnet34": ("resnet34", "ResNet34_Weights"),
    "resnet50": ("resnet50", "ResNet50_Weights"),
    "resnet101": ("resnet101", "ResNet101_Weights"),
    "resnext101_32x8d": ("resnext101_32x8d", "ResNeXt101_32X8D_Weights"),
}
_NORMS = ("frozen_bn", "bn", "gn")


def _norm_layer(norm: str) -> Callable[[int], nn.Module]:
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "gn":
        return partial(nn.GroupNorm, 32)
    raise ValueError(f"build_backbone: unknown norm {norm!r}; valid: {', '.join(_NORMS)}")


class ResNetBody(nn.Module):
    """The convolutional part of a torchvision ResNet (no avgpool / fc), returning C2..C5.

    Submodule names equal torchvision's so checkpoints load unchanged.
    """

    def __init__(self, trunk: torchvision.models.ResNet) -> None:
        super().__init__()
        self.conv1 = trunk.conv1
        self.bn1 = trunk.bn1
        self.relu = trunk.relu
        self.maxpool = trunk.maxpool
        self.layer1 = trunk.layer1
        self.layer2 = trunk.layer2
        self.layer3 = trunk.layer3
        self.layer4 = trunk.layer4

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """
        Args:
            x: Tensor[B, 3, H, W] float32 normalised images.

        Returns:
            OrderedDict '0'..'3' -> C2..C5, Tensor[B, C_l, H/2^(l+2), W/2^(l+2)].
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out: OrderedDict[str, Tensor] = OrderedDict()
        for key, layer in zip("0123", (self.layer1, self.layer2, self.layer3, self.layer4), strict=True):
            x = layer(x)
            out[key] = x
        return out


class BackboneWithFPN(nn.Module):
    """Trunk + FPN (P2..P5 plus max-pooled P6 'pool').

    Attributes:
        body: ResNetBody; fpn: torchvision FeaturePyramidNetwork; out_channels: FPN width.
    """

    def __init__(self, body: ResNetBody, in_channels_list: list[int], out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels_list, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """
        Args:
            x: Tensor[B, 3, H, W] float32 normalised, H and W divisible by 32.

        Returns:
            OrderedDict with keys '0','1','2','3','pool' -> Tensor[B, out_channels, H/s, W/s],
            s = 4, 8, 16, 32, 64.
        """
        return self.fpn(self.body(x))


def build_backbone(
    name: str,
    pretrained: bool = False,
    trainable_layers: int = 3,
    norm: str = "frozen_bn",
    out_channels: int = 256,
) -> BackboneWithFPN:
    """Build a ResNet/ResNeXt + FPN backbone.

    Args:
        name: one of resnet18, resnet34, resnet50, resnet101, resnext101_32x8d.
        pretrained: load torchvision's ImageNet (IMAGENET1K_V1) trunk weights (downloads them once
            into the torch hub cache; offline, a WeightsDownloadError explains how to pre-fetch).
        trainable_layers: 0..5 trunk stages left trainable counted from layer4 (5 = all, including
            conv1/bn1), frozen exactly like torchvision. Only applied with ``pretrained=True``:
            a randomly initialised trunk must train entirely (torchvision does the same).
        norm: "frozen_bn" (FrozenBatchNorm2d: statistics and affine fixed; use with pretrained
            weights), "bn" (trainable BatchNorm2d, for training from scratch; convert with
            nn.SyncBatchNorm.convert_sync_batchnorm for multi-GPU), "gn" (GroupNorm(32); no
            running statistics, so its state_dict has no running_mean/var keys).
        out_channels: FPN channels.
    """
    if name not in _TRUNKS:
        raise ValueError(f"build_backbone: unknown backbone {name!r}; valid names: {', '.join(_TRUNKS)}")
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"build_backbone: trainable_layers must be in [0, 5], got {trainable_layers}")
    norm_layer = _norm_layer(norm)
    if pretrained and norm == "gn":
        raise ValueError("build_backbone: ImageNet weights are BatchNorm weights; norm='gn' needs pretrained=False")

    fn_name, enum_name = _TRUNKS[name]
    weights = getattr(torchvision.models, enum_name).IMAGENET1K_V1 if pretrained else None
    with explain_download_errors(
        weights,
        f"ImageNet weights of the {name} backbone (model.backbone.pretrained=true)",
        "Or train the backbone from scratch with model.backbone.pretrained=false.",
    ):
        trunk = getattr(torchvision.models, fn_name)(weights=weights, norm_layer=norm_layer)

    if pretrained:
        freeze_trunk_layers(trunk, trainable_layers)

    # Stage widths: layer4 outputs trunk.inplanes channels; each earlier stage halves it.
    c5 = trunk.inplanes
    in_channels_list = [c5 // 8, c5 // 4, c5 // 2, c5]
    return BackboneWithFPN(ResNetBody(trunk), in_channels_list, out_channels)


def freeze_trunk_layers(trunk: nn.Module, trainable_layers: int) -> None:
    """Set requires_grad=False on all trunk parameters except the last ``trainable_layers`` stages.

    Stages counted from the top: layer4, layer3, layer2, layer1, conv1 (+ bn1 when 5), the same
    rule as torchvision's detection backbones. Works on a ResNet or a ResNetBody.
    """
    train_prefixes = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        train_prefixes.append("bn1")
    for param_name, param in trunk.named_parameters():
        if not any(param_name.startswith(p) for p in train_prefixes):
            param.requires_grad_(False)


def set_frozen_bn_eps(module: nn.Module, eps: float) -> None:
    """Set ``eps`` of every FrozenBatchNorm2d in ``module``.

    torchvision's COCO ``maskrcnn_resnet50_fpn`` (v1) checkpoint was trained with eps=0.0;
    torchvision overwrites it after loading, and so must we to reproduce its outputs.
    """
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.eps = eps
