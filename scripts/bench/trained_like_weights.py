"""Random R50-FPN weights that behave like trained ones where the benchmark needs it, no download.

Two things make seeded random weights a poor stand-in for a trained model in an inference
benchmark:

- BatchNorm at its init (mean 0, var 1, gamma 1, beta 0) is the identity, so folding it into the
  convolutions changes nothing and tests nothing. ``trained_like_state`` gives every BatchNorm
  non-trivial statistics and affine parameters.
- The predictors then see features of magnitude ~1e3 and saturate: objectness and class logits
  in the hundreds, box deltas over 100. Every box is clamped to the image border, scores tie at 1.0
  or sit near 1e-20, and non-maximum suppression compares IoUs that sit exactly at its threshold
  (a box clipped to ``[0, 0, 96, 96]`` against ``[0, 0, 48, 96]`` has IoU 0.5). Differences of
  1e-13 then change which boxes survive, so comparing two implementations measures that knife edge,
  not their arithmetic. ``calibrate_predictors`` rescales the five output layers (RPN objectness
  and deltas, box classifier and deltas, mask logits) on one image so that their outputs have the
  spread of a trained model's: the box decoding, NMS and score threshold then behave as they do
  with real weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# output standard deviation of each predictor layer after calibration: logits spread like a
# trained model's, deltas within the box coder's range (RPN deltas have weights 1, box-head deltas 10/5)
OUTPUT_STD = {
    "rpn.head.cls_logits": 2.0,
    "rpn.head.bbox_pred": 0.1,
    "roi_heads.box_predictor.cls_score": 1.5,
    "roi_heads.box_predictor.bbox_pred": 1.0,
    "roi_heads.mask_predictor.mask_fcn_logits": 2.0,
}


def trained_like_state(state: dict, seed: int = 0) -> dict:
    """``state`` with every BatchNorm's running_mean/var and weight/bias replaced by random
    non-trivial values (means ~N(0, 0.1), variances in [0.5, 1.5], gammas in [0.5, 1.5])."""
    g = torch.Generator().manual_seed(seed)
    out = dict(state)
    for key in state:
        if key.endswith(".running_var"):
            prefix, c = key[: -len("running_var")], state[key].shape[0]
            out[prefix + "running_mean"] = torch.randn(c, generator=g) * 0.1
            out[prefix + "running_var"] = torch.rand(c, generator=g) + 0.5
            out[prefix + "weight"] = torch.rand(c, generator=g) + 0.5
            out[prefix + "bias"] = torch.randn(c, generator=g) * 0.1
    return out


@torch.no_grad()
def calibrate_predictors(model: nn.Module, image: Tensor) -> None:
    """Scale the predictor layers of torchvision's ``MaskRCNN`` ``model`` (in place) so that on
    ``image`` (Tensor[3, H, W] float, [0, 1]) each one's outputs have the standard deviation in
    ``OUTPUT_STD`` around a zero bias.

    Layers are calibrated in data-flow order (the RPN decides the proposals the box head sees,
    which decide the detections the mask head sees), one forward pass each, with the score
    threshold lowered so that the mask head runs. ``model`` is left in eval mode.
    """
    model.eval()
    heads = model.roi_heads
    score_thresh, heads.score_thresh = heads.score_thresh, 0.0
    try:
        for path, target_std in OUTPUT_STD.items():
            layer = model.get_submodule(path)
            layer.bias.zero_()
            outputs: list[Tensor] = []
            handle = layer.register_forward_hook(lambda _m, _i, out, outputs=outputs: outputs.append(out.flatten()))
            try:
                model([image])
            finally:
                handle.remove()
            if not outputs or sum(o.numel() for o in outputs) < 2:
                raise RuntimeError(
                    f"calibrate_predictors: {path} produced no outputs on the calibration image "
                    "(no proposals or detections reached it)"
                )
            std = torch.cat(outputs).float().std()
            if not torch.isfinite(std) or std == 0:
                raise RuntimeError(f"calibrate_predictors: {path} gives outputs with std {float(std)}")
            layer.weight.mul_(target_std / std)
    finally:
        heads.score_thresh = score_thresh
