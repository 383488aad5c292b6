"""Anchor boxes for all FPN levels, identical (values and order) to torchvision's AnchorGenerator."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _cell_anchors(sizes: tuple[int, ...], aspect_ratios: tuple[float, ...]) -> Tensor:
    """Zero-centred anchors of one level.

    Returns:
        Tensor[len(aspect_ratios) * len(sizes), 4] float32 xyxy, ordered ratio-major
        (for each aspect ratio h/w, every size), rounded to integers like torchvision.
    """
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


class AnchorGenerator(nn.Module):
    """Anchors for a batch of padded images (all images share the padded size, so one tensor).

    Args:
        sizes: per FPN level, anchor side lengths in pixels, e.g. ((32,), (64,), ...).
        aspect_ratios: per FPN level, height/width ratios, e.g. ((0.5, 1.0, 2.0),) * 5.

    Output order (== torchvision): level, then feature-map row y, then column x, then the
    cell anchor (aspect ratio major, size minor). This is the order in which the RPN flattens
    its per-level [B, A, H, W] predictions.

    Holds no parameters or buffers. Results are cached per (padded size, feature sizes, dtype,
    device); the cached tensor is returned as is -- callers must not modify it in place.
    """

    _MAX_CACHE = 16

    def __init__(self, sizes: tuple[tuple[int, ...], ...], aspect_ratios: tuple[tuple[float, ...], ...]) -> None:
        super().__init__()
        if len(sizes) != len(aspect_ratios):
            raise ValueError(
                f"AnchorGenerator: {len(sizes)} size tuples but {len(aspect_ratios)} aspect-ratio tuples; "
                "need one of each per feature level"
            )
        self.sizes = tuple(tuple(s) for s in sizes)
        self.aspect_ratios = tuple(tuple(float(r) for r in a) for a in aspect_ratios)
        self._cell_anchors = [_cell_anchors(s, a) for s, a in zip(self.sizes, self.aspect_ratios, strict=True)]
        self._cache: dict[tuple, Tensor] = {}

    def num_anchors_per_location(self) -> int:
        """Anchors per feature-map cell (must be the same on every level: the RPN head is shared)."""
        counts = {len(s) * len(a) for s, a in zip(self.sizes, self.aspect_ratios, strict=True)}
        if len(counts) != 1:
            raise ValueError(f"AnchorGenerator: levels have different anchors per location {sorted(counts)}")
        return counts.pop()

    def forward(self, image_size: tuple[int, int], feature_maps: list[Tensor]) -> Tensor:
        """
        Args:
            image_size: (Hp, Wp) of the padded batch (``ImageBatch.tensors.shape[-2:]``).
            feature_maps: per level Tensor[B, C, H_l, W_l]; only shapes, dtype and device are used.

        Returns:
            Tensor[A_total, 4] xyxy, padded-image pixels, dtype/device of the features;
            A_total = sum_l H_l * W_l * num_anchors_per_location().
        """
        if len(feature_maps) != len(self._cell_anchors):
            raise ValueError(
                f"AnchorGenerator: got {len(feature_maps)} feature maps but anchors are defined for "
                f"{len(self._cell_anchors)} levels"
            )
        grid_sizes = tuple((int(f.shape[-2]), int(f.shape[-1])) for f in feature_maps)
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        key = (int(image_size[0]), int(image_size[1]), grid_sizes, dtype, device)
        anchors = self._cache.get(key)
        if anchors is None:
            anchors = self._grid_anchors(key[:2], grid_sizes, dtype, device)
            if len(self._cache) >= self._MAX_CACHE:
                self._cache.clear()
            self._cache[key] = anchors
        return anchors

    def _grid_anchors(
        self,
        image_size: tuple[int, int],
        grid_sizes: tuple[tuple[int, int], ...],
        dtype: torch.dtype,
        device: torch.device,
    ) -> Tensor:
        per_level = []
        for (gh, gw), base in zip(grid_sizes, self._cell_anchors, strict=True):
            # Integer strides (floor division) as in torchvision: padded size is divisible anyway.
            stride_h = torch.tensor(image_size[0] // gh, dtype=torch.int64, device=device)
            stride_w = torch.tensor(image_size[1] // gw, dtype=torch.int64, device=device)
            shifts_x = torch.arange(0, gw, dtype=torch.int32, device=device) * stride_w
            shifts_y = torch.arange(0, gh, dtype=torch.int32, device=device) * stride_h
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            base = base.to(dtype=dtype, device=device)
            per_level.append((shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4))
        return torch.cat(per_level, dim=0)

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, aspect_ratios={self.aspect_ratios}"
