"""An inference-only copy of a MaskRCNN: BatchNorm folded into the convolutions, channels_last
memory format, optional bf16 autocast and ``torch.compile``.

``optimize_for_inference(net)`` never changes ``net``: it deep-copies it, puts the copy in eval
mode and rewrites the copy. The copy keeps ``MaskRCNN``'s interface (``copy(images)["detections"]``)
and can be exported (``maskrcnn.inference.export_graph``) like the original. It cannot be trained: the folded
BatchNorm layers are gone (replaced by ``nn.Identity``) and their statistics live in the conv
weights.

Always done (exact up to float32 summation order): the mask branch computes only the logits of
each detection's class (``InferenceRoIHeads``). ``channels_last`` is ``memory_format.use_channels_last``,
the same switch that ``model.channels_last`` applies in training.

Numerics (bounds checked by tests/inference/test_fast_inference.py; R50 numbers in docs/benchmarks.md):

- ``fold_bn``, ``channels_last`` and ``onednn_linear`` only reorder float32 arithmetic: identical
  labels, boxes within 1e-3 px, scores within 1e-4, mask probabilities within 1e-3 of eager mode
  (in float64 they agree with torchvision to ~1e-12 px: the rewrites are exact algebra).
- ``roi_align_threads`` changes nothing: each thread runs torchvision's kernel on its RoIs.
- ``bf16`` runs the convolutions / linear layers in bfloat16 (8-bit mantissa): boxes move by
  pixels, scores by ~1e-2, and the detection list itself may change. Use it only where that is
  acceptable, and measure on your data.
- ``compile`` (inductor) fuses and reorders float32 arithmetic; differences are of the order of
  ``channels_last``'s. Compiling takes a minute or more on a small CPU: the RoI heads once, for
  dynamic shapes (any number of proposals / detections), the backbone and RPN head for the first
  input size and once more, for any size, at the second.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FrozenBatchNorm2d

from maskrcnn.inference.optimize.fused_fpn import fuse_fpn_top_down
from maskrcnn.inference.optimize.onednn_linear import onednn_linear, use_onednn_linear
from maskrcnn.modeling.backbone import ResNetBody
from maskrcnn.modeling.heads import MaskRCNNPredictor
from maskrcnn.modeling.poolers import MultiScaleRoIAlign
from maskrcnn.modeling.roi_heads import RoIHeads
from maskrcnn.ops.memory_format import use_channels_last

_BN_TYPES = (FrozenBatchNorm2d, nn.BatchNorm2d)
_Net = TypeVar("_Net", bound=nn.Module)

# The bf16 deviation from float32 eager that tests/inference/test_fast_inference.py allows (tiny R18
# model with trained-like BatchNorm; docs/benchmarks.md for R50 at 800 px): each of eager's 5 best
# detections has a bf16 detection of the same label with at least this IoU, and its score moves
# by at most this much. Not a guarantee for other weights: measure on your data.
BF16_TOLERANCE = {"top5_iou": 0.9, "score": 0.05}


def _conv_bn_pairs(module: nn.Module) -> Iterator[tuple[str, str]]:
    """(conv attribute, norm attribute) pairs of ``module`` where the norm directly follows the conv
    in the data flow. Only modules whose forward is known are listed: a conv registered before a
    norm in an arbitrary module need not feed it."""
    if isinstance(module, Bottleneck):
        yield from (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))
    elif isinstance(module, BasicBlock):
        yield from (("conv1", "bn1"), ("conv2", "bn2"))
    elif isinstance(module, ResNetBody) or type(module).__name__ == "ResNet":
        yield ("conv1", "bn1")
    elif isinstance(module, nn.Sequential):
        # a Sequential runs its children in order: torchvision's downsample = Sequential(conv, bn)
        names = [name for name, _ in module.named_children()]
        yield from zip(names, names[1:], strict=False)  # consecutive pairs: one fewer than names


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    if not isinstance(conv, nn.Conv2d) or not isinstance(norm, _BN_TYPES):
        return False
    if isinstance(norm, nn.BatchNorm2d) and (norm.training or norm.running_mean is None):
        return False  # batch statistics at run time: nothing fixed to fold
    running_mean = norm.running_mean  # FrozenBatchNorm2d has no num_features
    return running_mean is not None and conv.out_channels == running_mean.shape[0]


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, norm: Any) -> None:
    """Fold an eval-mode BatchNorm2d / FrozenBatchNorm2d that follows ``conv`` into ``conv`` (in place).

    ``norm(conv(x)) == conv'(x)`` with ``W' = W * s`` and ``b' = (b - mean) * s + beta`` where
    ``s = gamma / sqrt(var + eps)`` per output channel. Computed in float64, stored in the
    conv's dtype.
    """
    eps = norm.eps
    weight = norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)
    beta = norm.bias if norm.bias is not None else torch.zeros_like(norm.running_mean)
    scale = weight.double() * (norm.running_var.double() + eps).rsqrt()  # [C_out]
    conv_bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    new_weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
    new_bias = (conv_bias - norm.running_mean.double()) * scale + beta.double()
    dtype, device = conv.weight.dtype, conv.weight.device
    conv.weight = nn.Parameter(new_weight.to(dtype=dtype, device=device), requires_grad=False)
    conv.bias = nn.Parameter(new_bias.to(dtype=dtype, device=device), requires_grad=False)


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a conv in a known block (ResNet stem, Bottleneck,
    BasicBlock, Sequential e.g. the downsample path) into that conv and replace it by nn.Identity.

    BatchNorm2d layers in training mode are left alone. Returns the number of folded layers.
    """
    folded = 0
    for parent in list(module.modules()):
        for conv_name, norm_name in list(_conv_bn_pairs(parent)):
            conv, norm = getattr(parent, conv_name), getattr(parent, norm_name)
            if _foldable(conv, norm):
                fold_conv_bn(conv, norm)
                setattr(parent, norm_name, nn.Identity())
                folded += 1
    return folded


class InferenceRoIHeads(RoIHeads):
    """RoIHeads whose mask branch computes the logits of each detection's own class only.

    The last 1x1 conv of ``MaskRCNNPredictor`` maps C channels to K+1 class logits per pixel, and
    inference keeps one of them: gathering that class's weights first does 1/(K+1) of the work
    with the same arithmetic per logit.

    On the CPU in float32 the 2x2 stride-2 transposed conv before it runs as one oneDNN matmul
    with a fused ReLU: each input pixel feeds its own 2x2 output block (the blocks do not overlap),
    so it is ``[D*m*m, C] @ [C, 4*C']``, the same sums as the deconvolution (equal outputs here)
    in less time; the class logits are then taken in that
    matmul's layout and only the [D, 2m, 2m] logits are rearranged.
    """

    def mask_probs(
        self, features: dict[str, Tensor], boxes: list[Tensor], labels: Tensor, image_sizes: list[tuple[int, int]]
    ) -> Tensor:
        """As ``RoIHeads.mask_probs``: Tensor[D, 1, M, M] float32 probabilities of each box's class."""
        predictor = self.mask_predictor
        # checked by _selected_class_masks
        assert isinstance(predictor, MaskRCNNPredictor) and predictor.mask_fcn_logits.bias is not None
        x = self.mask_head(self.mask_pooler(features, boxes, image_sizes))  # Tensor[D, C, m, m]
        blocks = _upsample_blocks(predictor, x)  # Tensor[D*m*m, 4*C'] or None
        if blocks is None:
            x = predictor.relu(predictor.conv5_mask(x))  # Tensor[D, C', M, M]
            # a view when x is channels_last: Tensor[D, M*M, C'], pixels in row-major order
            pixels, num, side = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1]), x.shape[0], x.shape[-1]
        else:
            num, side = x.shape[0], 2 * x.shape[-1]
            pixels = blocks.view(num, -1, blocks.shape[1] // 4)  # [D, m*m*4, C'], (i, j, ky, kx) order
        if side != self.mask_size:
            return super().mask_probs(features, boxes, labels, image_sizes)  # raises the size error
        weight = predictor.mask_fcn_logits.weight[labels, :, 0, 0].to(pixels.dtype)  # [D, C']
        bias = predictor.mask_fcn_logits.bias[labels].to(pixels.dtype)  # [D]
        logits = torch.bmm(pixels, weight[:, :, None])  # [D, pixels, 1]
        if blocks is not None:  # (i, j, ky, kx) -> row 2i + ky, column 2j + kx
            logits = logits.view(num, side // 2, side // 2, 2, 2).permute(0, 1, 3, 2, 4)
        logits = logits.reshape(num, 1, side, side) + bias.view(-1, 1, 1, 1)
        return logits.float().sigmoid()


def _upsample_blocks(predictor: MaskRCNNPredictor, x: Tensor) -> Tensor | None:
    """``relu(conv5_mask(x))`` as Tensor[D*m*m, 4*C'] (row: input pixel (i, j); columns: output
    pixel (2i + ky, 2j + kx) then channel) through oneDNN's matmul, for x: Tensor[D, C, m, m];
    None unless conv5_mask is a 2x2 stride-2 ConvTranspose2d and the oneDNN op applies."""
    deconv = predictor.conv5_mask
    if not (
        type(deconv) is nn.ConvTranspose2d
        and deconv.kernel_size == (2, 2)
        and deconv.stride == (2, 2)
        and deconv.padding == (0, 0)
        and deconv.output_padding == (0, 0)
        and deconv.dilation == (1, 1)
        and deconv.groups == 1
        and deconv.bias is not None
        and type(predictor.relu) is nn.ReLU
    ):
        return None
    # weight: Tensor[C, C', 2, 2] -> rows (ky, kx, o), as nn.Linear stores [out, in]
    weight = deconv.weight.permute(2, 3, 1, 0).reshape(-1, deconv.in_channels)
    pixels = x.permute(0, 2, 3, 1).reshape(-1, deconv.in_channels)  # a view when x is channels_last
    return onednn_linear(pixels, weight, deconv.bias.repeat(4), relu=True)


def _selected_class_masks(heads: nn.Module) -> bool:
    """Switch ``heads`` to InferenceRoIHeads where its mask predictor has the known layout."""
    predictor = getattr(heads, "mask_predictor", None)
    if type(heads) is not RoIHeads or not isinstance(predictor, MaskRCNNPredictor):
        return False
    if predictor.mask_fcn_logits.kernel_size != (1, 1) or predictor.mask_fcn_logits.bias is None:
        return False
    heads.__class__ = InferenceRoIHeads  # same attributes, one method overridden
    return True


def _float32(value: Any) -> Any:
    """Cast every floating Tensor in a (nested) output back to float32."""
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return type(value)((k, _float32(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_float32(v) for v in value)
    return value


def _autocast_forward(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    device = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        out = forward(*args, **kwargs)
    return _float32(out)  # the non-autocast rest (RoIAlign, NMS, box decoding) stays float32


def heavy_parts(net: nn.Module) -> dict[str, nn.Module]:
    """The convolution / linear stacks that hold nearly all FLOPs, by attribute path."""
    parts = {"backbone": net.get_submodule("backbone"), "rpn.head": net.get_submodule("rpn.head")}
    heads = net.get_submodule("roi_heads")
    for name in ("box_head", "box_predictor", "mask_head", "mask_predictor"):
        parts[f"roi_heads.{name}"] = getattr(heads, name)
    if isinstance(heads, InferenceRoIHeads):  # calls the predictor's upsampling conv, not its forward
        parts["roi_heads.mask_predictor"] = heads.get_submodule("mask_predictor.conv5_mask")
    return parts


def compile_heavy_parts(parts: dict[str, nn.Module], options: dict | None = None) -> None:
    """``nn.Module.compile()`` each of ``heavy_parts``. The RoI heads get another number of proposals
    / detections with every image: compiled for dynamic shapes from the start, the first call builds
    the graph every later count uses (compiled static, each new count would build one of its own
    until dynamo's recompile limit). Backbone and RPN head: static for the first image size, one
    dynamic graph at the second. ``options``: inductor options."""
    extra = {} if options is None else {"options": options}
    for path, module in parts.items():
        module.compile(dynamic=True if path.startswith("roi_heads.") else None, **extra)


def optimize_for_inference(
    net: _Net,
    *,
    fold_bn: bool = True,
    channels_last: bool = True,
    roi_align_threads: bool = True,
    onednn_linear: bool = True,
    compile: bool = False,  # noqa: A002 (mirrors torch.compile / nn.Module.compile)
    bf16: bool = False,
) -> _Net:
    """An eval-mode, inference-only copy of a MaskRCNN (``net`` itself is not changed).

    Args:
        net: a ``MaskRCNN`` (its backbone, rpn.head and roi_heads box/mask heads are rewritten).
        fold_bn: fold FrozenBatchNorm2d and eval-mode BatchNorm2d into the preceding conv.
        channels_last: NHWC memory format for the backbone + FPN, the RPN head and the mask head
            (and the image batch entering the backbone); oneDNN convolutions then skip the
            NCHW <-> blocked reorders around every conv.
        roi_align_threads: split the RoIs of each RoIAlign over ``torch.get_num_threads()`` CPU
            threads (torchvision's CPU kernel is serial); bit-identical outputs.
        onednn_linear: run the box head's and box predictor's linear layers on oneDNN's matmul
            instead of the BLAS sgemm (``modeling/onednn_linear.py``); float32 sums reordered.
        compile: ``nn.Module.compile()`` the backbone, RPN head and box / mask heads (inductor;
            the data-dependent NMS / sampling code between them stays eager).
        bf16: run the backbone, RPN head and box / mask heads under CPU bfloat16 autocast, with
            their outputs cast back to float32. Changes detections (module docstring).

    Always (exact up to float32 summation order): the mask branch computes only the logits of
    each detection's class, its upsampling as one matmul (``InferenceRoIHeads``); the FPN adds
    each top-down map without materialising its 2x upsampling (``fused_fpn``, exact).

    Returns:
        the optimised copy, in eval mode, with ``requires_grad=False`` everywhere.
    """
    missing = [name for name in ("backbone", "rpn", "roi_heads") if not hasattr(net, name)]
    if missing:
        raise TypeError(f"optimize_for_inference: expected a MaskRCNN, {type(net).__name__} has no {missing}")
    fast: Any = copy.deepcopy(net).eval()  # a MaskRCNN: backbone, rpn, roi_heads
    fast.requires_grad_(False)
    _selected_class_masks(fast.roi_heads)
    fuse_fpn_top_down(fast.backbone)
    parts = heavy_parts(fast)
    if fold_bn:
        fold_batchnorm(fast.backbone)
    if channels_last:
        use_channels_last(fast)
    if roi_align_threads:
        for module in fast.modules():
            if isinstance(module, MultiScaleRoIAlign):
                module.forward_threads = 0  # as many as torch has when it runs
    if onednn_linear:
        use_onednn_linear(fast.roi_heads)
    if bf16:
        for module in parts.values():
            # an instance attribute shadows the class's forward for nn.Module.__call__
            module.forward = functools.partial(_autocast_forward, module.forward)
    if compile:
        # freezing: weights become constants, so inductor pre-packs them for oneDNN once instead of
        # reordering them on every call (the conv weights are fixed here anyway)
        compile_heavy_parts(parts, options={"freezing": True})
    return fast
