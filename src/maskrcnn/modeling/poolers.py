"""Multi-scale RoIAlign over FPN levels, with a bilinear (torchvision) or bicubic sampler.

Level assignment and scale inference reproduce ``torchvision.ops.MultiScaleRoIAlign`` so that a
torchvision checkpoint pools exactly the same features. The bicubic sampler places its sampling
points exactly where RoIAlign does (``sampling_ratio`` x ``sampling_ratio`` points per bin,
averaged) and only changes the interpolation kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from maskrcnn.ops.roi_align_threads import roi_align_forward_threads, roi_align_threaded_backward

_INTERPOLATIONS = ("bilinear", "bicubic")
# Keys cubic-convolution parameter; -0.5 (Catmull-Rom) is the only value that is exact on linear signals.
_CUBIC_A = -0.5


def infer_scale(feature: Tensor, image_size: tuple[int, int]) -> float:
    """Feature stride as a power of two, from the feature height over the largest image height.

    Args:
        feature: Tensor[B, C, h, w] one FPN level.
        image_size: (H, W) the largest (unpadded) image size of the batch.
    """
    # torchvision rounds log2(h / H) to the nearest integer and uses the height only.
    approx = float(feature.shape[-2]) / float(image_size[0])
    return 2.0 ** float(torch.tensor(approx).log2().round())


def assign_levels(boxes: Tensor, k_min: int, k_max: int, canonical_scale: int, canonical_level: int) -> Tensor:
    """FPN paper eq. (1): level of each box, shifted so that ``k_min`` -> 0.

    Args:
        boxes: Tensor[R, 4] float, xyxy, absolute pixels (resized-image coordinates).

    Returns:
        Tensor[R] int64 in ``[0, k_max - k_min]``.
    """
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    size = torch.sqrt(area)
    # the 1e-6 guards boxes that sit exactly on a level boundary against log2 round-off
    levels = torch.floor(canonical_level + torch.log2(size / canonical_scale) + torch.tensor(1e-6, dtype=size.dtype))
    levels = torch.clamp(levels, min=k_min, max=k_max)
    return levels.to(torch.int64) - k_min


def to_roi_format(boxes: Sequence[Tensor]) -> Tensor:
    """Concatenate per-image boxes into RoIAlign's ``[R, 5]`` (batch_index, x1, y1, x2, y2) layout."""
    flat = torch.cat(list(boxes), dim=0)
    ids = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)], dim=0)
    return torch.cat([ids, flat], dim=1)


def _sample_coords(start: Tensor, length: Tensor, bins: int, ratio: int) -> Tensor:
    """Sampling coordinates along one axis, in RoIAlign's order.

    Args:
        start: Tensor[R] RoI start in feature-map pixels.
        length: Tensor[R] RoI length in feature-map pixels.

    Returns:
        Tensor[R, bins * ratio]: for bin p and sub-sample i, ``start + (p + (i + 0.5) / ratio) * length / bins``.
    """
    bin_size = length / bins
    p = torch.arange(bins, dtype=start.dtype, device=start.device)
    i = torch.arange(ratio, dtype=start.dtype, device=start.device)
    # same association of the arithmetic as RoIAlign: start + p * bin + (i + .5) * bin / ratio
    offsets = p[:, None, None] * bin_size + (i[None, :, None] + 0.5) * bin_size / ratio
    return (start[:, None, None] + offsets.permute(2, 0, 1)).reshape(start.shape[0], bins * ratio)


def _cubic_taps(coords: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Four Catmull-Rom taps per coordinate along one axis.

    Args:
        coords: Tensor[...] sampling coordinates in pixels (pixel i has its centre at i),
            already clamped to ``[0, size - 1]``.

    Returns:
        (index Tensor[..., 4] int64 clamped to ``[0, size - 1]`` (border replication),
         weight Tensor[..., 4] summing to 1).
    """
    base = torch.floor(coords)
    t = (coords - base)[..., None]
    k = torch.arange(-1, 3, device=coords.device, dtype=coords.dtype)
    dist = (t - k).abs()  # distance of the sample to each of the 4 taps, in [0, 2]
    a = _CUBIC_A
    near = ((a + 2) * dist - (a + 3)) * dist * dist + 1
    far = ((a * dist - 5 * a) * dist + 8 * a) * dist - 4 * a
    weight = torch.where(dist <= 1, near, far)
    index = (base[..., None] + k).clamp(0, size - 1).to(torch.int64)
    return index, weight


def roi_align_bicubic(
    features: Tensor,
    rois: Tensor,
    output_size: tuple[int, ...],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """RoIAlign whose sampling points are interpolated bicubically instead of bilinearly.

    The sampling points are RoIAlign's (``sampling_ratio`` x ``sampling_ratio`` per bin,
    averaged); points outside ``[-1, size]`` contribute zero and points in the outer half
    pixel are clamped to the border, exactly as in RoIAlign. The kernel is Catmull-Rom
    (Keys, a = -0.5) rather than ``F.grid_sample``'s a = -0.75 because only a = -0.5
    reproduces linear (and quadratic) signals exactly.

    Args:
        features: Tensor[B, C, h, w] one feature level.
        rois: Tensor[R, 5] (batch_index, x1, y1, x2, y2) in image pixels.
        output_size: (P, Q) bins per RoI.
        spatial_scale: feature pixels per image pixel.
        sampling_ratio: sampling points per bin along each axis (must be > 0).
        aligned: subtract half a pixel (pixel-centre model) like ``roi_align(aligned=True)``.

    Returns:
        Tensor[R, C, P, Q] pooled features.
    """
    if sampling_ratio <= 0:
        raise ValueError(f"bicubic RoIAlign needs sampling_ratio > 0 (no adaptive sampling), got {sampling_ratio}")
    num_rois, channels = rois.shape[0], features.shape[1]
    (pooled_h, pooled_w), s = output_size, sampling_ratio
    height, width = features.shape[-2:]
    if num_rois == 0:
        return features.new_zeros((0, channels, pooled_h, pooled_w))

    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x1
    roi_h = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:
        # legacy RoIAlign forces malformed RoIs to be at least 1x1 feature pixels
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    ys = _sample_coords(y1, roi_h, pooled_h, s)  # [R, P*s]
    xs = _sample_coords(x1, roi_w, pooled_w, s)  # [R, Q*s]
    valid = ((ys >= -1.0) & (ys <= height))[:, :, None] & ((xs >= -1.0) & (xs <= width))[:, None, :]
    iy, wy = _cubic_taps(ys.clamp(0, height - 1), height)  # [R, P*s, 4]
    ix, wx = _cubic_taps(xs.clamp(0, width - 1), width)  # [R, Q*s, 4]

    # Every output value is a fixed linear combination of 16 * s * s feature pixels, so the whole
    # level is pooled by ONE sparse [R*P*Q, B*h*w] @ dense [B*h*w, C] product; this never
    # materialises the per-sample values (C x R x P*s x Q*s) and has a cheap backward.
    dims = (num_rois, pooled_h, pooled_w, s, 4, s, 4)  # (roi, p, q, sub_y, tap_y, sub_x, tap_x)
    iy = iy.view(num_rois, pooled_h, 1, s, 4, 1, 1)
    ix = ix.view(num_rois, 1, pooled_w, 1, 1, s, 4)
    base = (rois[:, 0].to(torch.int64) * (height * width)).view(num_rois, 1, 1, 1, 1, 1, 1)
    cols = (base + iy * width + ix).expand(dims)
    valid = valid.view(num_rois, pooled_h, s, pooled_w, s).permute(0, 1, 3, 2, 4)[:, :, :, :, None, :, None]
    weights = wy.view(num_rois, pooled_h, 1, s, 4, 1, 1) * wx.view(num_rois, 1, pooled_w, 1, 1, s, 4)
    values = (weights * valid.to(weights.dtype) / (s * s)).expand(dims)
    rows = torch.arange(num_rois * pooled_h * pooled_w, device=rois.device)
    rows = rows.view(num_rois, pooled_h, pooled_w, 1, 1, 1, 1)
    indices = torch.stack([rows.expand(dims).reshape(-1), cols.reshape(-1)])
    matrix = torch.sparse_coo_tensor(
        indices,
        values.reshape(-1).float(),
        (num_rois * pooled_h * pooled_w, features.shape[0] * height * width),
        check_invariants=False,  # indices are in range by construction (taps are clamped)
    )
    dense = features.float().permute(0, 2, 3, 1).reshape(-1, channels)  # [B*h*w, C]
    pooled = torch.sparse.mm(matrix, dense).view(num_rois, pooled_h, pooled_w, channels)
    return pooled.permute(0, 3, 1, 2).to(features.dtype)


class MultiScaleRoIAlign(nn.Module):
    """Pool a fixed-size feature for every box from the FPN level that matches its size.

    Args:
        featmap_names: keys of the backbone feature dict to pool from, finest first.
        output_size: P or (P, Q) bins per RoI (7 for the box head, 14 for the mask head).
        sampling_ratio: sampling points per bin along each axis (0 = adaptive, bilinear only).
        aligned: half-pixel-correct RoIAlign (detectron2); torchvision's models use False.
        interpolation: "bilinear" (torchvision.ops.roi_align) or "bicubic".
        canonical_scale, canonical_level: FPN eq. (1): a ``canonical_scale``-sized box pools
            from level ``canonical_level``.
        backward_threads: > 1 splits the bilinear backward's RoIs over that many CPU threads
            (``roi_align_threads``: faster training on CPU, gradient sums reordered); 1 = torchvision's.

    ``forward_threads`` (attribute, not an argument; set by the inference copy of
    ``inference.optimize.fast_inference``): != 1 splits the forward's RoIs over that many CPU threads
    (0 = ``torch.get_num_threads()``) when no gradient is needed; bit-identical outputs.

    Holds no parameters or buffers, so it never appears in a state dict.
    """

    def __init__(
        self,
        featmap_names: Sequence[str] = ("0", "1", "2", "3"),
        output_size: int | Sequence[int] = 7,
        sampling_ratio: int = 2,
        aligned: bool = False,
        interpolation: str = "bilinear",
        canonical_scale: int = 224,
        canonical_level: int = 4,
        backward_threads: int = 1,
    ) -> None:
        super().__init__()
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"MultiScaleRoIAlign: interpolation (model.roi_align.interpolation) must be in {_INTERPOLATIONS}, "
                f"got {interpolation!r}"
            )
        if interpolation == "bicubic" and sampling_ratio <= 0:
            raise ValueError(f"MultiScaleRoIAlign: bicubic needs sampling_ratio > 0, got {sampling_ratio}")
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        if not isinstance(backward_threads, int) or isinstance(backward_threads, bool) or backward_threads < 1:
            raise ValueError(
                f"MultiScaleRoIAlign: backward_threads (model.roi_align.backward_threads) must be an "
                f"integer >= 1, got {backward_threads!r}"
            )
        self.backward_threads = backward_threads
        self.forward_threads = 1
        self.featmap_names = list(featmap_names)
        self.output_size = tuple(int(s) for s in output_size)
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.interpolation = interpolation
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def _pool_level(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        if self.interpolation == "bicubic":
            return roi_align_bicubic(feature, rois, self.output_size, scale, self.sampling_ratio, self.aligned)
        if self.backward_threads > 1:
            return roi_align_threaded_backward(
                feature, rois, self.output_size, scale, self.sampling_ratio, self.aligned, self.backward_threads
            )
        if self.forward_threads != 1:
            return roi_align_forward_threads(
                feature, rois, self.output_size, scale, self.sampling_ratio, self.aligned, self.forward_threads
            )
        return roi_align(feature, rois, self.output_size, scale, self.sampling_ratio, self.aligned)

    def forward(
        self, features: dict[str, Tensor], boxes: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]]
    ) -> Tensor:
        """
        Args:
            features: name -> Tensor[B, C, h_l, w_l]; levels not in ``featmap_names`` are ignored.
            boxes: per image Tensor[R_i, 4] float, xyxy, absolute pixels of the resized image.
            image_sizes: per image (H, W) of the resized, unpadded image.

        Returns:
            Tensor[sum R_i, C, P, Q] pooled features, in the order of the concatenated boxes.
        """
        missing = [n for n in self.featmap_names if n not in features]
        if missing:
            raise KeyError(f"MultiScaleRoIAlign: feature maps {missing} missing; got {list(features)}")
        if len(image_sizes) == 0:
            raise ValueError("MultiScaleRoIAlign: image_sizes is empty")
        levels = [features[n] for n in self.featmap_names]
        max_size = (max(int(s[0]) for s in image_sizes), max(int(s[1]) for s in image_sizes))
        scales = [infer_scale(f, max_size) for f in levels]
        rois = to_roi_format(boxes).to(levels[0].dtype)
        if len(levels) == 1:
            return self._pool_level(levels[0], rois, scales[0])

        k_min = int(-math.log2(scales[0]))
        k_max = int(-math.log2(scales[-1]))
        level_of_roi = assign_levels(rois[:, 1:], k_min, k_max, self.canonical_scale, self.canonical_level)
        tracing = torch.jit.is_tracing()
        # every RoI gets exactly one level, so each row is written below and the output needs no
        # zero-filling (a non-finite box, which has no level, is zeroed after)
        shape = (rois.shape[0], levels[0].shape[1]) + self.output_size
        out = levels[0].new_zeros(shape) if tracing else levels[0].new_empty(shape)
        written = 0
        for level, (feature, scale) in enumerate(zip(levels, scales, strict=True)):
            idx = torch.where(level_of_roi == level)[0]
            written += idx.numel()
            pooled = self._pool_level(feature, rois[idx], scale).to(out.dtype)
            if tracing:
                # a traced ``out[idx] = ...`` exports (ONNX) with the example's count frozen when it is 1;
                # the equivalent scatter along dim 0 keeps the count dynamic
                out = out.scatter(0, idx.view(-1, 1, 1, 1).expand_as(pooled), pooled)
            else:
                out[idx] = pooled
        if not tracing and written != rois.shape[0]:
            out[(level_of_roi < 0) | (level_of_roi >= len(levels))] = 0
        return out

    def extra_repr(self) -> str:
        return (
            f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}, "
            f"aligned={self.aligned}, interpolation={self.interpolation!r}"
        )
