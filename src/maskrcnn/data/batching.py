"""How training batches are drawn: which images an epoch shows (every image once, or repeat-factor
sampling), split over DDP ranks, batched with their orientation or at random, each item tagged
with its epoch so that its augmentation is seeded by (data seed, epoch, index) alone; and the
seeds of the loader workers."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
from torch.utils.data import DistributedSampler, get_worker_info

from maskrcnn.data.coco import CocoInstanceDataset
from maskrcnn.data.repeat_factor_sampler import RepeatFactorSampler
from maskrcnn.data.sampler import GroupedBatchSampler, aspect_ratio_group_ids, grouping_is_worthwhile


def training_batch_sampler(
    dataset: CocoInstanceDataset,
    batch_size: int,
    seed: int,
    world: int,
    rank: int,
    aspect_ratio_grouping: bool | str,
    repeat_factors: np.ndarray | None,
    drop_last: bool,
) -> GroupedBatchSampler:
    """The batch sampler of one rank's training loader.

    Args:
        dataset: the training split.
        seed: shuffling seed (and data seed of the items' augmentation seeds).
        world / rank: DDP world size and this rank; every rank gets an equal share.
        aspect_ratio_grouping: True, False or "auto" (``CocoDataModule``).
        repeat_factors: ``ndarray[N] float64``, one per image: repeat-factor sampling; None: every
            image once per epoch.
        drop_last: drop a last incomplete batch of an epoch.
    Yields (as a batch sampler): lists of ``(index, epoch[, copy])`` items (``GroupedBatchSampler``).
    """
    sampler: DistributedSampler  # of indices into the dataset, or of (index, copy) items
    if repeat_factors is not None:
        sampler = RepeatFactorSampler(repeat_factors, num_replicas=world, rank=rank, seed=seed)
    else:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    group_ids = aspect_ratio_group_ids(dataset.aspect_ratios())
    grouping = aspect_ratio_grouping
    if grouping == "auto":
        grouping = grouping_is_worthwhile(group_ids, batch_size)
    if not grouping:
        group_ids = [0] * len(dataset)
    return GroupedBatchSampler(sampler, group_ids, batch_size, drop_last=drop_last, tag_epoch=True)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give every worker its own python / numpy / augmentation seed.

    ``worker_info.seed`` is torch's per-worker seed (base seed drawn in the main process + worker
    id), so it differs per worker and per run and is reproducible under ``seed_everything``.
    """
    info = get_worker_info()
    assert info is not None  # worker_init_fn runs in a DataLoader worker
    seed = info.seed % 2**32
    random.seed(seed)
    np.random.seed(seed)
    transforms: Any = getattr(info.dataset, "transforms", None)
    if hasattr(transforms, "set_seed"):
        transforms.set_seed(seed)
