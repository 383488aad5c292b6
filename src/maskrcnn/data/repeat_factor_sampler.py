"""Repeat-factor sampling (``data.sampler=repeat_factor``; LVIS, Gupta et al. 2019, as in detectron2).

Images with rare categories are shown more often per epoch. A category ``c`` found in the fraction
``f(c)`` of the training images gets ``r(c) = max(1, sqrt(t / f(c)))`` (``t`` =
``data.repeat_threshold``); an image gets the largest ``r(c)`` of its categories, 1 without
instances. Every epoch each image is repeated ``floor(r)`` or ``ceil(r)`` times, ``ceil`` with
probability ``r - floor(r)``.

One departure from detectron2, which rounds every image independently so that the epoch length
varies: here the rounding is systematic (one uniform offset per epoch over the factors in a
shuffled order), so every epoch holds the same number of images, ``round(sum of the factors)``.
Each image is still shown ``floor`` or ``ceil`` of its factor with the probabilities above, the
factors first scaled by that length over their sum (a change of less than half an image per epoch
in total). Lightning reads an epoch's length once, for the LR schedule
(``estimated_stepping_batches``), the progress display and validation intervals, and the mid-epoch
resume counts batches within an epoch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Iterator, Sequence

import numpy as np
from torch.utils.data import DistributedSampler

logger = logging.getLogger(__name__)

# Items of an epoch: (dataset index, copy), copy = how many times the index came earlier in the
# epoch's list (0 for its first showing); GroupedBatchSampler turns the copy into its own augmentation seed.
Item = tuple[int, int]


def category_repeat_factors(image_labels: Sequence[Collection[int]], threshold: float) -> dict[int, float]:
    """``r(c) = max(1, sqrt(threshold / f(c)))`` for every category ``c`` of the images.

    Args:
        image_labels: the categories (labels) of each training image's instances.
        threshold: ``t`` in (0, 1]; categories in at least this fraction of the images get 1.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    counts: dict[int, int] = {}
    for labels in image_labels:
        for label in set(labels):
            counts[label] = counts.get(label, 0) + 1
    n = max(1, len(image_labels))
    return {label: max(1.0, math.sqrt(threshold / (count / n))) for label, count in sorted(counts.items())}


def image_repeat_factors(image_labels: Sequence[Collection[int]], threshold: float) -> np.ndarray:
    """Per image: the largest factor of its categories, 1 for an image without instances.

    Returns:
        ``ndarray[N] float64``, ``N = len(image_labels)``, every value >= 1.
    """
    per_category = category_repeat_factors(image_labels, threshold)
    return np.array([max((per_category[c] for c in labels), default=1.0) for labels in image_labels], dtype=np.float64)


def training_repeat_factors(image_labels: Sequence[Collection[int]], threshold: float) -> np.ndarray:
    """:func:`image_repeat_factors`, with a warning when no image is repeated (``t`` at most ``1 / N``)."""
    factors = image_repeat_factors(image_labels, threshold)
    if len(factors) and float(factors.max()) == 1.0:
        logger.warning(
            "data.sampler=repeat_factor repeats no image: every category is in at least "
            "data.repeat_threshold=%g of the %d training images (it acts only above 1/%d)",
            threshold,
            len(factors),
            len(factors),
        )
    return factors


def epoch_length(factors: np.ndarray) -> int:
    """Images per epoch (all ranks, before DDP padding): the sum of the factors, rounded."""
    return max(1, round(float(factors.sum())))


def epoch_repeats(factors: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """How often each image is shown in ``epoch``: ``ndarray[N] int64`` summing to ``epoch_length(factors)``.

    The factors are scaled to sum to that length (``w``), laid end to end in an order shuffled by
    (``seed``, ``epoch``), and cut at ``u, u + 1, ...`` with one uniform ``u``: image ``i`` gets
    ``floor(w_i)`` or ``ceil(w_i)`` cuts, ``ceil`` with probability ``w_i - floor(w_i)``.
    """
    rng = _generator(seed, epoch)
    length = epoch_length(factors)
    order = rng.permutation(len(factors))
    ends = np.cumsum(factors[order] * (length / float(factors.sum())))
    ends[-1] = length  # exact, whatever the float sum
    offset = rng.random()
    cuts = np.ceil(ends - offset).astype(np.int64)  # cuts below each end, counted from 0
    repeats = np.empty(len(factors), dtype=np.int64)
    repeats[order] = np.diff(cuts, prepend=0)
    return repeats


def epoch_items(factors: np.ndarray, seed: int, epoch: int) -> list[Item]:
    """The epoch's shuffled ``(index, copy)`` list, the same for every rank (before padding)."""
    repeats = epoch_repeats(factors, seed, epoch)
    indices = np.repeat(np.arange(len(factors)), repeats)
    shuffled = indices[_generator(seed, epoch, 1).permutation(len(indices))]
    seen: dict[int, int] = {}
    items = []
    for index in shuffled.tolist():
        items.append((index, seen.get(index, 0)))
        seen[index] = seen.get(index, 0) + 1
    return items


def _generator(seed: int, epoch: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed % 2**32, epoch, stream]))


class RepeatFactorSampler(DistributedSampler):
    """Yields this rank's ``(index, copy)`` items of the epoch's repeat-factor list.

    Each epoch (``set_epoch``, which Lightning calls) draws :func:`epoch_items` from (``seed``,
    epoch) alone, pads it by repeating its first items to a multiple of ``num_replicas``, and gives
    rank ``r`` the positions ``r, r + num_replicas, ...``: disjoint shares of one list, of equal
    length on every rank and in every epoch. A subclass of ``DistributedSampler`` only so that
    Lightning's ``use_distributed_sampler`` leaves it alone.

    Args:
        factors: ``ndarray[N] float64`` repeat factor of every dataset index (:func:`image_repeat_factors`).
        num_replicas / rank: DDP world size and this process's rank.
        seed: the data seed.
    """

    def __init__(self, factors: np.ndarray, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        if len(factors) == 0 or float(np.min(factors)) < 1.0:
            raise ValueError("factors must be a non-empty array of values >= 1")
        # Deliberately not calling super().__init__: it would query torch.distributed.
        self.factors = np.asarray(factors, dtype=np.float64)
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.shuffle, self.drop_last, self.epoch = True, False, 0
        self.epoch_images = epoch_length(self.factors)
        self.num_samples = math.ceil(self.epoch_images / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def __iter__(self) -> Iterator[Item]:  # (index, copy) items, not indices
        items = epoch_items(self.factors, self.seed, self.epoch)
        padded = (items * math.ceil(self.total_size / len(items)))[: self.total_size]
        return iter(padded[self.rank : self.total_size : self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples
