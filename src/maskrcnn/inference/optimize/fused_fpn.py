"""torchvision's ``FeaturePyramidNetwork`` with the top-down pathway's upsample + add fused, for
the inference copy (``fast_inference.optimize_for_inference``).

Each top-down step of the FPN upsamples the coarser map 2x (nearest) and adds it to the lateral
1x1 conv's output. At 800 px the finest step materialises a 41 MB upsampled map and a second
41 MB sum. Nearest 2x upsampling repeats each value over a 2x2 block, so the same sums are one
broadcast add into the lateral output, viewed as ``[B, C, h, 2, w, 2]``: the same float32
additions (exact), without the two temporaries.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

from maskrcnn.inference.optimize.module_swap import swap_exact_type


def _add_top_down(lateral: Tensor, coarser: Tensor) -> Tensor:
    """``lateral + interpolate(coarser, size=lateral.shape[-2:], mode="nearest")``.

    lateral: Tensor[B, C, H, W]; coarser: Tensor[B, C, h, w]. In place on ``lateral`` when
    H, W = 2h, 2w, both have one dtype, no gradient is recorded and ``lateral`` is NCHW or NHWC
    contiguous.
    """
    b, c, h, w = coarser.shape
    # same dtype: an in-place add would round a float32 top-down map to a bf16 lateral (autocast)
    # where the out-of-place sum promotes to float32
    fusable = (
        tuple(lateral.shape) == (b, c, 2 * h, 2 * w)
        and lateral.dtype == coarser.dtype
        and not torch.is_grad_enabled()
        and (lateral.is_contiguous() or lateral.is_contiguous(memory_format=torch.channels_last))
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
    )
    if not fusable:
        return lateral + F.interpolate(coarser, size=lateral.shape[-2:], mode="nearest")
    lateral.view(b, c, h, 2, w, 2).add_(coarser[:, :, :, None, :, None])
    return lateral


class FusedTopDownFPN(FeaturePyramidNetwork):
    """``FeaturePyramidNetwork`` (same modules and state dict) whose forward fuses each top-down
    upsample + add (module docstring); outputs are equal to torchvision's."""

    def forward(self, x: dict[str, Tensor]) -> dict[str, Tensor]:
        """x: name -> Tensor[B, C_l, H_l, W_l], finest first -> name -> Tensor[B, out_channels, H_l, W_l]."""
        names, feats = list(x.keys()), list(x.values())
        last_inner = self.get_result_from_inner_blocks(feats[-1], -1)
        results = [self.get_result_from_layer_blocks(last_inner, -1)]
        for idx in range(len(feats) - 2, -1, -1):
            last_inner = _add_top_down(self.get_result_from_inner_blocks(feats[idx], idx), last_inner)
            results.insert(0, self.get_result_from_layer_blocks(last_inner, idx))
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, feats, names)
        return OrderedDict(zip(names, results, strict=True))


def fuse_fpn_top_down(module: nn.Module) -> int:
    """Switch every plain ``FeaturePyramidNetwork`` in ``module`` to ``FusedTopDownFPN`` (in place,
    same parameters). Returns how many were switched."""
    return swap_exact_type(module, FeaturePyramidNetwork, FusedTopDownFPN)
