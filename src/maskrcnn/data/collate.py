"""Batch collation that keeps images of different sizes as a list (the model pads them)."""

from __future__ import annotations

from torch import Tensor


def collate(batch: list[tuple[Tensor, dict] | None]) -> tuple[list[Tensor], list[dict]]:
    """Turn ``[(image, target), ...]`` into ``(images, targets)``.

    Args:
        batch: items of ``CocoInstanceDataset``: image ``Tensor[3, H_i, W_i] float32`` in [0, 1]
            and its target dict (``maskrcnn.modeling.structures.Target``), or ``None`` for an image
            the dataset skipped as unreadable (``bad_images="skip"``; the dataset already listed
            it in ``skipped_images_{split}.jsonl``). ``None`` items are dropped, so a batch may be
            smaller than ``batch_size`` or even empty (the LightningModule skips empty batches).
    Returns:
        images: ``list[Tensor[3, H_i, W_i]]``; targets: ``list[dict]`` in the same order.
    """
    items = [item for item in batch if item is not None]
    images = [image for image, _ in items]
    targets = [target for _, target in items]
    return images, targets
