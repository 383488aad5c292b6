"""channels_last (NHWC) memory format for a MaskRCNN's convolution stacks, for training and inference.

oneDNN (CPU) and cuDNN (GPU, AMP) run NHWC convolutions without the NCHW <-> blocked reorders
around every call, so the backbone + FPN, the RPN head and the mask head get faster
(docs/benchmarks.md). The box head is linear layers on flattened RoI features and is left alone.

Numerics: the same float32 products summed in another order (tests/ops/test_memory_format.py): FPN
features agree to 1e-5 of their scale, backbone gradients as closely as any two float32 kernels
do (oneDNN against ATen's own NCHW kernels), and detections to 1e-3 px. A full training step's
losses agree to 1e-3 relative; not better, because a fresh RPN scores many anchors alike and a
1e-7 change can reorder tied proposals, and with them the sampled RoIs. So it is an option
(``model.channels_last``), off by default, and the default path stays bit-exact with torchvision.
State dicts are unchanged (same keys, same values; only the strides differ).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# attribute paths of the modules whose convolutions hold nearly all FLOPs
CONV_PARTS = ("backbone", "rpn.head", "roi_heads.mask_head", "roi_heads.mask_predictor")


def use_channels_last(net: nn.Module) -> nn.Module:
    """Put ``net``'s conv stacks in channels_last, in place; returns ``net``. Idempotent.

    The image batch Tensor[B, 3, H, W] is made channels_last as it enters the backbone (forward
    pre-hook), and the FPN features dict is made NCHW once as it enters the RoI heads, because
    torchvision's RoIAlign would otherwise copy each level to NCHW on every call (box and mask
    poolers). Parameters keep their shapes and values, so ``state_dict`` / ``load_state_dict``
    work across memory formats.
    """
    for path in CONV_PARTS:  # again on a second call: a rewrite (BatchNorm folding) may have replaced weights
        net.get_submodule(path).to(memory_format=torch.channels_last)
    if not getattr(net, "channels_last", False):
        net.get_submodule("backbone").register_forward_pre_hook(_images_to_channels_last)
        net.get_submodule("roi_heads").register_forward_pre_hook(_features_to_nchw)
        net.channels_last = True  # type: ignore[assignment]  # a flag; stub: Module attrs are Tensor | Module
    return net


def _images_to_channels_last(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of the backbone: the padded image batch enters as channels_last."""
    return tuple(
        a.contiguous(memory_format=torch.channels_last) if isinstance(a, Tensor) and a.dim() == 4 else a for a in args
    )


def _features_to_nchw(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of the RoI heads: every FPN level Tensor[B, C, H, W] becomes NCHW once."""
    features, *rest = args
    return ({name: to_nchw(f) for name, f in features.items()}, *rest)


def to_nchw(x: Tensor) -> Tensor:
    """``x.contiguous()`` for a channels_last Tensor[B, C, H, W], faster on CPU.

    Per image the [H*W, C] matrix is transposed as a 2-D matrix, which ATen copies in
    cache-sized blocks; a 4-D ``contiguous()`` walks the strided source element by element. The
    values are identical, and autograd flows through it (the backward is the inverse transpose).
    """
    if x.dim() != 4 or x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous()
    b, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view: channels_last is NHWC in memory
    out = x.new_empty((b, c, h * w))
    for i in range(b):
        out[i].copy_(rows[i].t())
    return out.view(b, c, h, w)
