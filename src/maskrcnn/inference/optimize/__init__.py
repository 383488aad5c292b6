"""The CPU inference copy (``inference=fast``): ``optimize_for_inference`` is the one entry.

It copies a trained network and swaps in equal-output parts: threaded RoIAlign forward, oneDNN
linear layers (``onednn_linear``), a fused FPN top-down add (``fused_fpn``), channels_last, and
optionally ``torch.compile``; ``module_swap`` replaces modules of one exact type.
"""

from maskrcnn.inference.optimize.fast_inference import optimize_for_inference

__all__ = ["optimize_for_inference"]
