"""Mask pasting (batched, no per-mask Python loop) and binary / RLE mask output formats.

Two geometries, both as separable bilinear resizes: pasted = Ry @ padded_mask @ Rx^T with
Ry: [H, M+2] and Rx: [W, M+2] holding the interpolation weights (zero outside the box), so a chunk
of masks is pasted with two batched matmuls.

- ``aligned=False`` matches ``torchvision.models.detection.roi_heads.paste_masks_in_image``: the
  padded mask's box is enlarged by (M+2)/M, snapped to integers and the mask resized to that
  integer box, which shifts the mask by up to a pixel and stretches it by one pixel: invisible on
  a 200 px object, a large error on a 6 px one.
- ``aligned=True`` samples the M x M grid exactly where the box puts it: image pixel centre
  ``x + 0.5`` reads mask coordinate ``(x + 0.5 - x1) * M / (x2 - x1) - 0.5`` (detectron2's
  paste, and the geometry of ``roi_align(aligned=True)`` that produced the mask targets).
"""

from __future__ import annotations

import math
from typing import TypedDict

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor

from maskrcnn.modeling.mask_crops import MaskCrop
from maskrcnn.modeling.structures import MASK_FORMATS, MASK_THRESHOLD


def expand_boxes_to_int(boxes: Tensor, scale: float) -> Tensor:
    """Enlarge boxes about their centre by ``scale`` and truncate to integers (torchvision's order of ops).

    Args:
        boxes: Tensor[N, 4] float, xyxy, absolute pixels.

    Returns:
        Tensor[N, 4] int64, xyxy, inclusive integer pixel box.
    """
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    ctr_x = (boxes[:, 2] + boxes[:, 0]) * 0.5
    ctr_y = (boxes[:, 3] + boxes[:, 1]) * 0.5
    expanded = torch.stack((ctr_x - half_w, ctr_y - half_h, ctr_x + half_w, ctr_y + half_h), dim=1)
    return expanded.to(torch.int64)  # truncation toward zero, as in torchvision


def _resize_weights(start: Tensor, end: Tensor, out_len: int, in_len: int, dtype: torch.dtype) -> Tensor:
    """Interpolation matrix of a 1-D bilinear resize (align_corners=False) placed at ``[start, end]``.

    Args:
        start, end: Tensor[n] int64, inclusive integer extent of each box along the axis
            (may reach outside ``[0, out_len)``).
        out_len: image length along the axis.
        in_len: padded mask length M + 2.

    Returns:
        Tensor[n, out_len, in_len]: row ``p`` holds the weights of image pixel ``p``; all-zero rows
        outside the box.
    """
    n = start.shape[0]
    length = (end - start + 1).clamp(min=1)  # resized mask length, at least one pixel
    pos = torch.arange(out_len, device=start.device)
    j = pos[None, :] - start[:, None]  # index into the resized mask
    inside = (pos[None, :] >= start[:, None]) & (pos[None, :] <= end[:, None])
    # PyTorch's upsample_bilinear computes the ratio in float32 and clamps negative sources to 0
    ratio = torch.tensor(float(in_len), dtype=torch.float32, device=start.device) / length.to(torch.float32)
    src = ((j.to(torch.float32) + 0.5) * ratio[:, None] - 0.5).clamp(min=0)
    i0 = src.to(torch.int64).clamp(max=in_len - 1)
    i1 = (i0 + 1).clamp(max=in_len - 1)
    lam1 = (src - i0.to(torch.float32)) * inside
    lam0 = (1.0 - (src - i0.to(torch.float32))) * inside
    weights = torch.zeros((n, out_len, in_len), dtype=torch.float32, device=start.device)
    weights.scatter_add_(2, i0[..., None], lam0[..., None])
    weights.scatter_add_(2, i1[..., None], lam1[..., None])
    return weights.to(dtype)


def _aligned_resize_weights(
    lo: Tensor, hi: Tensor, out_len: int, size: int, dtype: torch.dtype, start: int = 0
) -> Tensor:
    """Interpolation matrix placing an M-bin mask exactly over the float extent ``[lo, hi]``.

    Args:
        lo, hi: Tensor[n] float, box extent along the axis (pixel ``p`` covers ``[p, p + 1)``).
        out_len: number of image pixels along the axis, from pixel ``start`` on.
        size: M; the matrix reads the mask padded by one zero on both sides (M + 2 columns).
        start: first image pixel (a crop of the image); the weights of a pixel are bit-identical
            whatever the crop, so a crop-wise paste equals the full one.

    Returns:
        Tensor[n, out_len, M + 2]: bilinear weights of image pixel ``p``; zero rows where both
        neighbours are padding (more than one bin outside the box).
    """
    centres = torch.arange(start, start + out_len, device=lo.device, dtype=torch.float32) + 0.5
    lo, hi = lo.to(torch.float32), hi.to(torch.float32)
    bins_per_pixel = size / (hi - lo).clamp(min=1e-6)
    # +1: index into the padded mask, whose bin centres sit at 1..M.
    src = (centres[None, :] - lo[:, None]) * bins_per_pixel[:, None] + 0.5
    inside = (src > 0) & (src < size + 1)
    src = src.clamp(0, size + 1)
    i0 = src.floor().to(torch.int64).clamp(max=size + 1)
    i1 = (i0 + 1).clamp(max=size + 1)
    frac = src - i0.to(torch.float32)
    weights = torch.zeros((lo.shape[0], out_len, size + 2), dtype=torch.float32, device=lo.device)
    weights.scatter_add_(2, i0[..., None], ((1.0 - frac) * inside)[..., None])
    weights.scatter_add_(2, i1[..., None], (frac * inside)[..., None])
    return weights.to(dtype)


def paste_masks(
    masks: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    padding: int = 1,
    chunk_size: int = 64,
    mask_format: str = "prob",
    aligned: bool = False,
) -> Tensor | list[dict]:
    """Paste per-box mask probabilities into full images.

    Args:
        masks: Tensor[N, 1, M, M] float, mask probabilities in box-relative coordinates.
        boxes: Tensor[N, 4] float, xyxy, absolute pixels of the target image.
        image_size: (H, W) of the target image.
        padding: zero border added around each mask before resizing (torchvision uses 1),
            which lets the mask fade out at the box edge instead of being cut.
        chunk_size: masks pasted per batched matmul; bounds the temporary memory to
            ``chunk_size * H * max(W, M + 2)`` elements besides the output.
        mask_format: "prob" returns Tensor[N, 1, H, W] probabilities; "binary" is converted
            chunk by chunk, so no float [N, H, W] tensor is ever held; "rle" pastes each mask
            over its box only (the cheap way to return 300 masks of a 24-megapixel photo).
        aligned: exact placement (see the module docstring); False is torchvision's paste.
            ``padding`` must be 1 when aligned (the zero border the bilinear fade reads).

    Returns:
        Tensor[N, 1, H, W] masks.dtype probabilities (0 outside the expanded box), Tensor[N, 1, H, W]
        bool (``> MASK_THRESHOLD``) or a list of N COCO RLE dicts, per ``mask_format``.
    """
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
    if aligned and padding != 1:
        raise ValueError(f"paste_masks: aligned pasting pads by exactly 1, got padding={padding}")
    height, width = int(image_size[0]), int(image_size[1])
    padded, place = _placement(masks, boxes, padding, aligned, "paste_masks")
    num = masks.shape[0]

    def paste(lo: int, hi: int, out: Tensor | None = None) -> Tensor:
        return _paste_chunk(padded[lo:hi], place[lo:hi], height, width, aligned, out=out)

    if torch.jit.is_tracing():
        # the chunk loop would be unrolled for the example's mask count; one chunk keeps N dynamic
        return format_masks(paste(0, num)[:, None], mask_format)
    if mask_format == "rle":
        return [_paste_crop(padded[i], place[i], height, width, aligned).to_rle(height, width) for i in range(num)]
    dtype = torch.bool if mask_format == "binary" else masks.dtype
    # every element is written below (the matmul covers whole rows, zeros outside the box):
    # zero-filling first would be one more pass over N*H*W (256 MB for 100 masks at 800 px)
    out = torch.empty((num, 1, height, width), dtype=dtype, device=masks.device)
    for lo in range(0, num, chunk_size):
        hi = min(lo + chunk_size, num)
        if mask_format == "prob":
            paste(lo, hi, out=out[lo:hi, 0])
        else:
            out[lo:hi, 0] = masks_to_binary(paste(lo, hi))
    return out


def paste_mask_crops(
    masks: Tensor, boxes: Tensor, image_size: tuple[int, int], aligned: bool = False
) -> list[MaskCrop]:
    """``paste_masks(..., mask_format="binary")`` with each mask held as the crop outside which it is
    zero (the crops ``mask_format="rle"`` encodes): the cost grows with the boxes, not the image.

    Args: masks, boxes, image_size, aligned as for ``paste_masks`` (padding 1).
    Returns: N ``MaskCrop``s, clipped to the image.
    """
    padded, place = _placement(masks, boxes, 1, aligned, "paste_mask_crops")
    height, width = int(image_size[0]), int(image_size[1])
    return [_paste_crop(padded[i], place[i], height, width, aligned) for i in range(masks.shape[0])]


def _placement(masks: Tensor, boxes: Tensor, padding: int, aligned: bool, name: str) -> tuple[Tensor, Tensor]:
    """Checked shapes -> (padded masks Tensor[N, M+2p, M+2p], where each goes: the float boxes
    (aligned) or torchvision's enlarged integer boxes Tensor[N, 4] int64)."""
    if masks.dim() != 4 or masks.shape[1] != 1 or masks.shape[-1] != masks.shape[-2]:
        raise ValueError(f"{name}: masks must be [N, 1, M, M], got {tuple(masks.shape)}")
    if boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"{name}: boxes must be [N, 4] with N = {masks.shape[0]}, got {tuple(boxes.shape)}")
    size = masks.shape[-1]
    padded = torch.nn.functional.pad(masks[:, 0], (padding,) * 4)
    return padded, boxes if aligned else expand_boxes_to_int(boxes, float(size + 2 * padding) / size)


def _paste_crop(padded: Tensor, place: Tensor, height: int, width: int, aligned: bool) -> MaskCrop:
    """One mask pasted over the image pixels its weights reach, thresholded.

    padded: Tensor[S, S]; place: Tensor[4], as for ``_paste_chunk``. The cost grows with the box,
    not the image: a 24-megapixel photo with 100 detections costs the area of 100 boxes. The
    pixels outside the crop are zero in the full paste too, and each pixel's weights are the same
    as there (integer shifts of the legacy box; absolute pixel positions when aligned), so the
    crop's RLE equals ``masks_to_rle`` of the full paste.
    """
    if aligned:  # weights reach one bin beyond the box on each side
        x0, y0, x1, y1 = place.tolist()
        bin_w, bin_h = (x1 - x0) / (padded.shape[-1] - 2), (y1 - y0) / (padded.shape[-1] - 2)
        c0, r0 = max(math.floor(x0 - bin_w), 0), max(math.floor(y0 - bin_h), 0)
        c1, r1 = min(math.ceil(x1 + bin_w), width - 1), min(math.ceil(y1 + bin_h), height - 1)
    else:
        x0, y0, x1, y1 = (int(v) for v in place.tolist())
        c0, c1, r0, r1 = max(x0, 0), min(x1, width - 1), max(y0, 0), min(y1, height - 1)
    if c0 > c1 or r0 > r1:
        return MaskCrop(0, 0, np.zeros((0, 0), dtype=bool))
    h, w = r1 - r0 + 1, c1 - c0 + 1
    if aligned:
        size = padded.shape[-1] - 2
        ry = _aligned_resize_weights(place[None, 1], place[None, 3], h, size, padded.dtype, start=r0)
        rx = _aligned_resize_weights(place[None, 0], place[None, 2], w, size, padded.dtype, start=c0)
        crop = torch.bmm(torch.bmm(ry, padded[None]), rx.transpose(1, 2))[0]
    else:
        shifted = torch.tensor([[x0 - c0, y0 - r0, x1 - c0, y1 - r0]], device=padded.device)
        crop = _paste_chunk(padded[None], shifted, h, w, aligned=False)[0]
    return MaskCrop(r0, c0, (crop > MASK_THRESHOLD).cpu().numpy())


def _paste_chunk(
    padded: Tensor, place: Tensor, height: int, width: int, aligned: bool, out: Tensor | None = None
) -> Tensor:
    """padded: Tensor[n, S, S] padded masks; place: Tensor[n, 4], float boxes (aligned) or int64
    inclusive integer boxes -> Tensor[n, height, width] (written into ``out`` when given)."""
    if aligned:
        size = padded.shape[-1] - 2
        ry = _aligned_resize_weights(place[:, 1], place[:, 3], height, size, padded.dtype)  # [n, H, S]
        rx = _aligned_resize_weights(place[:, 0], place[:, 2], width, size, padded.dtype)  # [n, W, S]
    else:
        ry = _resize_weights(place[:, 1], place[:, 3], height, padded.shape[-1], padded.dtype)
        rx = _resize_weights(place[:, 0], place[:, 2], width, padded.shape[-1], padded.dtype)
    return torch.bmm(torch.bmm(ry, padded), rx.transpose(1, 2), out=out)


def masks_to_binary(masks: Tensor, threshold: float = MASK_THRESHOLD) -> Tensor:
    """Threshold pasted probabilities.

    Args:
        masks: Tensor[N, 1, H, W] float probabilities.

    Returns:
        Tensor[N, 1, H, W] bool, ``masks > threshold`` (the rule torchvision's COCO evaluation uses).
    """
    return masks > threshold


def masks_to_rle(masks: Tensor, threshold: float = MASK_THRESHOLD) -> list[dict]:
    """Encode masks as COCO run-length encodings.

    Args:
        masks: Tensor[N, 1, H, W] float probabilities (thresholded with ``> threshold``) or bool.

    Returns:
        list of N dicts ``{"size": [H, W], "counts": str}`` (pycocotools compressed RLE, counts
        decoded to str so the result is JSON-serialisable).
    """
    if masks.dim() != 4 or masks.shape[1] != 1:
        raise ValueError(f"masks_to_rle: masks must be [N, 1, H, W], got {tuple(masks.shape)}")
    binary = masks if masks.dtype == torch.bool else masks_to_binary(masks, threshold)
    if binary.shape[0] == 0:
        return []
    # pycocotools wants a Fortran-ordered uint8 array [H, W, N]
    array = np.asfortranarray(binary[:, 0].permute(1, 2, 0).cpu().numpy().astype(np.uint8))
    rles = mask_utils.encode(array)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def format_masks(masks: Tensor, mask_format: str) -> Tensor | list[dict]:
    """Convert pasted probabilities to the requested output format ("prob", "binary" or "rle")."""
    if mask_format == "prob":
        return masks
    if mask_format == "binary":
        return masks_to_binary(masks)
    if mask_format == "rle":
        return masks_to_rle(masks)
    raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")


class NumpyDetections(TypedDict):
    """``detections_to_numpy``'s result."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    masks: np.ndarray | None


def detections_to_numpy(det: dict, score_thresh: float) -> NumpyDetections:
    """A ``Detection`` as numpy, for drawing and logging: detections with ``score >= score_thresh``.

    Returns boxes ``[D, 4]`` float xyxy, labels ``[D]``, scores ``[D]`` and masks ``[D, H, W]`` bool
    (probabilities thresholded with ``> MASK_THRESHOLD``, binary masks as they are, RLE decoded;
    None for an RLE list with nothing kept).
    """
    keep = det["scores"] >= score_thresh
    masks = det["masks"]
    if isinstance(masks, Tensor):
        masks = masks[keep][:, 0]
        masks = (masks if masks.dtype == torch.bool else masks_to_binary(masks)).cpu().numpy()
    else:  # RLE list
        kept = [m for m, k in zip(masks, keep.tolist(), strict=True) if k]
        masks = mask_utils.decode(kept).transpose(2, 0, 1).astype(bool) if kept else None
    return {
        "boxes": det["boxes"][keep].cpu().numpy(),
        "labels": det["labels"][keep].cpu().numpy(),
        "scores": det["scores"][keep].cpu().numpy(),
        "masks": masks,
    }
