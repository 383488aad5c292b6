"""Batch collation that keeps images of different sizes as a list (the model pads them)."""

from __future__ import annotations

from torch import Tensor


def collate(batch: list[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    """Turn ``[(image, target), ...]`` into ``(images, targets)``.

    Args:
        batch: items of ``CocoInstanceDataset``: image ``Tensor[3, H_i, W_i] float32`` in [0, 1]
            and its target dict (docs/design.md "Training target dict").
    Returns:
        images: ``list[Tensor[3, H_i, W_i]]``; targets: ``list[dict]`` in the same order.
    """
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets
