"""Draw instance masks, boxes and class names onto an image (PIL + numpy, no plotting libs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from maskrcnn.modeling.structures import MASK_THRESHOLD

# Colour of label l: PALETTE[l % len(PALETTE)] (RGB, float32), shared by every tool that draws labels.
PALETTE = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
        [0, 128, 128],
        [170, 110, 40],
    ],
    dtype=np.float32,
)


@overload
def _numpy(x: np.ndarray | torch.Tensor) -> np.ndarray: ...
@overload
def _numpy(x: np.ndarray | torch.Tensor | None) -> np.ndarray | None: ...
def _numpy(x: object | None) -> np.ndarray | None:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def draw_instances(
    image: np.ndarray,
    boxes: np.ndarray | torch.Tensor,
    masks: np.ndarray | torch.Tensor | None,
    labels: np.ndarray | torch.Tensor,
    class_names: Sequence[str] | None = None,
    scores: np.ndarray | torch.Tensor | None = None,
    alpha: float = 0.45,
    mask_threshold: float = MASK_THRESHOLD,
) -> np.ndarray:
    """Overlay instances on an image.

    Args:
        image: ``np.ndarray[H, W, 3] uint8`` RGB.
        boxes: ``[N, 4]`` xyxy absolute pixels.
        masks: ``[N, H, W]`` or ``[N, 1, H, W]``, binary or probabilities (thresholded at
            ``mask_threshold``); None to draw boxes only.
        labels: ``[N]`` int contiguous labels.
        class_names: indexed by label (``class_names[0]`` is background); None prints the label.
        scores: optional ``[N]`` confidences appended to the caption.
    Returns:
        ``np.ndarray[H, W, 3] uint8``, a new image (the input is not modified).
    """
    boxes_np, labels_np = _numpy(boxes).reshape(-1, 4), _numpy(labels).reshape(-1)
    masks_np, scores_np = _numpy(masks), _numpy(scores)
    out = image.astype(np.float32).copy()
    colours = PALETTE[labels_np % len(PALETTE)] if len(labels_np) else PALETTE[:0]
    if masks_np is not None and len(masks_np):
        masks_np = masks_np.reshape(len(masks_np), *masks_np.shape[-2:]) > mask_threshold
        for mask, colour in zip(masks_np, colours, strict=True):
            out[mask] = (1 - alpha) * out[mask] + alpha * colour
    canvas = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, (box, label, colour) in enumerate(zip(boxes_np, labels_np, colours, strict=True)):
        rgb = tuple(int(c) for c in colour)
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=rgb, width=2)
        name = class_names[int(label)] if class_names is not None and int(label) < len(class_names) else str(int(label))
        caption = name if scores_np is None else f"{name} {float(scores_np[i]):.2f}"
        left, top, right, bottom = draw.textbbox((x0, y0), caption, font=font)
        ty = y0 - (bottom - top) - 2 if y0 - (bottom - top) - 2 >= 0 else y0
        draw.rectangle([x0, ty, x0 + (right - left) + 4, ty + (bottom - top) + 2], fill=rgb)
        draw.text((x0 + 2, ty), caption, fill=(0, 0, 0) if sum(rgb) > 380 else (255, 255, 255), font=font)
    return np.asarray(canvas)
