"""Data pipeline: COCO datasets, augmentation, samplers and the Lightning data module.

Modules (imported explicitly to keep ``import maskrcnn.data`` light): ``coco`` (CocoInstanceDataset),
``transforms`` (build_transforms), ``sampler``, ``collate``, ``datamodule`` (CocoDataModule),
``shapes`` (synthetic dataset), ``draw`` (draw_instances), ``errors`` (DatasetError).
"""

from maskrcnn.data.errors import DatasetError

__all__ = ["DatasetError"]
