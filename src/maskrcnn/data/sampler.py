"""Samplers: aspect-ratio grouped training batches and a non-padding distributed inference split."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import BatchSampler, Dataset, DistributedSampler, Sampler


def aspect_ratio_group_ids(aspect_ratios: Sequence[float]) -> list[int]:
    """Group 0 = landscape or square (width >= height), group 1 = portrait."""
    return [0 if ratio >= 1.0 else 1 for ratio in aspect_ratios]


def sample_seed(seed: int, epoch: int, index: int, copy: int = 0) -> int:
    """The augmentation seed of dataset item ``index`` in ``epoch`` of a run with data seed ``seed``;
    ``copy`` > 0 for the item's further showings in one epoch (``data.sampler=repeat_factor``).

    Derived from these numbers alone (``numpy.random.SeedSequence``, well mixed and the same on
    every platform), so an item's augmentation does not depend on the items augmented before it.
    """
    key = [seed % 2**32, epoch, index] + ([copy] if copy else [])
    return int(np.random.SeedSequence(key).generate_state(1)[0])


# ``aspect_ratio_grouping="auto"`` groups only when every group fills at least this many batches.
MIN_BATCHES_PER_GROUP = 8


def grouping_is_worthwhile(group_ids: Sequence[int], batch_size: int, min_batches: int = MIN_BATCHES_PER_GROUP) -> bool:
    """True when every non-empty group holds at least ``min_batches * batch_size`` images.

    A smaller group is batched only with itself: with 2 portrait images among 12 at batch 2, the
    same portrait pair is every sixth step and those two are never batched with any other image.
    Then random pairs (grouping off, as a plain DataLoader with ``shuffle=True`` gives) are the
    better choice; a large dataset groups (less padding) with batches as random as ungrouped ones.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    counts = [list(group_ids).count(g) for g in set(group_ids)]
    return len(counts) > 1 and min(counts) >= min_batches * batch_size


class GroupedBatchSampler(BatchSampler):
    """Yield batches whose images all share an aspect-ratio group (less padding per batch).

    Indices are drawn from ``sampler`` in its order and collected per group; a group's buffer is
    emitted as soon as it holds ``batch_size`` indices. When ``sampler`` is exhausted the leftovers
    of all groups are concatenated and emitted in chunks of ``batch_size`` (these last batches may
    mix groups). So exactly ``ceil(len(sampler) / batch_size)`` batches are produced, or
    ``floor(...)`` with ``drop_last=True`` (then the final partial batch is dropped). Every rank of a
    DDP job therefore runs the same number of steps as long as ``len(sampler)`` is equal on all
    ranks, which ``DistributedSampler`` guarantees (it pads by repeating a few indices).

    DDP: pass a ``DistributedSampler`` as ``sampler``. Lightning can also swap in its own one: it
    re-creates this class with the new ``sampler`` argument, and calls ``sampler.set_epoch``.

    ``skip_batches`` (attribute, 0 by default) leaves out the first that many batches of the next
    iteration only (mid-epoch resume, ``maskrcnn.data.resumable_loader``); the batches after them
    are the ones a full iteration would yield.

    ``tag_epoch=True`` yields ``(index, epoch)`` pairs instead of indices, ``epoch`` being the
    sampler's ``epoch`` (set by ``set_epoch``). ``CocoInstanceDataset`` seeds the augmentation of
    such an item from the pair alone, so an image gets the same augmentation in an epoch whatever
    was drawn before it: in a resumed run, with any number of workers, on any DDP rank. A sampler
    may also yield ``(index, copy)`` items (``RepeatFactorSampler``: ``copy`` counts the index's
    earlier showings in the epoch); a copy > 0 then yields ``(index, epoch, copy)``, its own seed.

    Args:
        sampler: yields dataset indices (e.g. ``DistributedSampler(dataset, shuffle=True)``) or
            ``(index, copy)`` items.
        group_ids: group of every dataset index, ``len(group_ids) == len(dataset)``.
        batch_size: images per batch (per device).
        drop_last: drop the final incomplete batch.
        tag_epoch: yield ``(index, epoch)`` pairs (see above).
    """

    def __init__(
        self,
        sampler: Sampler[int] | Sampler[tuple[int, int]],
        group_ids: Sequence[int],
        batch_size: int,
        drop_last: bool = False,
        tag_epoch: bool = False,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.sampler = sampler  # type: ignore[assignment]  # BatchSampler declares int items; (index, copy) too
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.tag_epoch = tag_epoch
        self.skip_batches = 0

    def __iter__(self) -> Iterator[list[Any]]:  # list[int], or list of (index, epoch[, copy]) with tag_epoch
        skip, self.skip_batches = self.skip_batches, 0
        epoch = int(getattr(self.sampler, "epoch", 0))
        for number, batch in enumerate(self._batches()):
            if number >= skip:
                yield [_tagged(item, epoch) for item in batch] if self.tag_epoch else [_index(i) for i in batch]

    def _batches(self) -> Iterator[list[int | tuple[int, int]]]:
        buffers: dict[int, list[int | tuple[int, int]]] = defaultdict(list)
        for item in self.sampler:
            group = buffers[self.group_ids[_index(item)]]
            group.append(item)
            if len(group) == self.batch_size:
                yield group.copy()
                group.clear()
        leftovers = [i for group_id in sorted(buffers) for i in buffers[group_id]]
        for start in range(0, len(leftovers), self.batch_size):
            batch = leftovers[start : start + self.batch_size]
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


def _index(item: int | tuple[int, int]) -> int:
    return item[0] if isinstance(item, tuple) else item


def _tagged(item: int | tuple[int, int], epoch: int) -> tuple[int, ...]:
    """``(index, epoch)``, or ``(index, epoch, copy)`` for an ``(index, copy)`` item with copy > 0."""
    index, copy = item if isinstance(item, tuple) else (item, 0)
    return (index, epoch, copy) if copy else (index, epoch)


class InferenceSampler(DistributedSampler):
    """Split ``range(len(dataset))`` into contiguous, non-overlapping, unpadded chunks per rank.

    Unlike ``DistributedSampler`` no index is repeated, so distributed evaluation sees every image
    exactly once (rank r gets ``[r*q + min(r, m), ...)`` with ``q, m = divmod(N, world)``; ranks may
    differ in length by one). It subclasses ``DistributedSampler`` only so that Lightning's
    ``use_distributed_sampler`` leaves it alone instead of wrapping it in a padding sampler.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        # Deliberately not calling super().__init__: it would query torch.distributed and pad.
        self.dataset = dataset
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = False
        self.epoch = 0
        size = len(dataset)  # type: ignore[arg-type]
        per_rank, extra = divmod(size, num_replicas)
        self.begin = rank * per_rank + min(rank, extra)
        self.end = self.begin + per_rank + (1 if rank < extra else 0)
        self.num_samples = self.end - self.begin
        self.total_size = size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.begin, self.end))

    def __len__(self) -> int:
        return self.num_samples
