"""``data.sampler=repeat_factor``: LVIS repeat factors, rounded per epoch from (seed, epoch) alone.

Golden factors on a hand-made category distribution, the rounding's probabilities, the DDP split,
aspect-ratio grouping on top, an exact mid-epoch resume of the data loader, and a real training run.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from helpers.config import TINY, compose
from helpers.step_recorder import read_steps
from maskrcnn.data.repeat_factor_sampler import (
    RepeatFactorSampler,
    category_repeat_factors,
    epoch_items,
    epoch_length,
    epoch_repeats,
    image_repeat_factors,
)
from maskrcnn.data.sampler import GroupedBatchSampler
from maskrcnn.training.pipeline import train

# 10 images: category 1 in 9 of them, 2 in 2, 3 in 1, one image without instances.
LABELS = [{1}, {1}, {1}, {1}, {1}, {1, 2}, {1, 2}, {1, 3}, set(), {1}]
FACTORS = [1, 1, 1, 1, 1, math.sqrt(2), math.sqrt(2), 2, 1, 1]  # t = 0.4: sqrt(0.4 / 0.2), sqrt(0.4 / 0.1)


def test_repeat_factors_of_a_hand_made_distribution():
    assert category_repeat_factors(LABELS, 0.4) == pytest.approx({1: 1.0, 2: math.sqrt(2), 3: 2.0})
    np.testing.assert_allclose(image_repeat_factors(LABELS, 0.4), FACTORS, rtol=1e-12)
    # detectron2's default threshold leaves a set where every category is common unchanged
    np.testing.assert_array_equal(image_repeat_factors(LABELS, 0.001), np.ones(10))
    assert category_repeat_factors(LABELS, 1.0)[1] == pytest.approx(math.sqrt(1 / 0.9))


def test_each_epoch_rounds_every_factor_down_or_up_with_its_probability_and_keeps_its_length():
    factors = np.array(FACTORS)
    length = epoch_length(factors)
    assert length == 12  # round(7 + 2 sqrt(2) + 2)
    scaled = factors * length / factors.sum()
    counts = np.array([epoch_repeats(factors, seed=3, epoch=e) for e in range(4000)])
    assert (counts.sum(axis=1) == length).all()
    assert ((counts == np.floor(scaled)) | (counts == np.ceil(scaled))).all()
    np.testing.assert_allclose(counts.mean(axis=0), scaled, atol=0.03)  # the mean of 4000 draws
    assert counts[:, 7].mean() == pytest.approx(2.0 * 12 / factors.sum(), abs=0.03)


def test_the_epoch_list_depends_on_seed_and_epoch_alone():
    factors = np.array(FACTORS)
    items = epoch_items(factors, seed=7, epoch=2)
    assert items == epoch_items(factors, seed=7, epoch=2)
    assert items != epoch_items(factors, seed=7, epoch=3) and items != epoch_items(factors, seed=8, epoch=2)
    assert Counter(i for i, _ in items) == Counter(dict(enumerate(epoch_repeats(factors, 7, 2).tolist())))
    for index, copy in items:  # copy: the index's earlier showings in the list
        assert copy == sum(1 for i, _ in items[: items.index((index, copy))] if i == index)


@pytest.mark.parametrize("world", [1, 2, 5])
def test_ddp_ranks_get_disjoint_shares_of_one_list_of_equal_length(world):
    factors = np.array(FACTORS)
    ranks = [RepeatFactorSampler(factors, num_replicas=world, rank=r, seed=11) for r in range(world)]
    for epoch in (0, 1):
        for sampler in ranks:
            sampler.set_epoch(epoch)
        shares = [list(sampler) for sampler in ranks]
        assert {len(share) for share in shares} == {len(ranks[0])} == {math.ceil(12 / world)}
        interleaved = [share[k] for k in range(len(shares[0])) for share in shares]
        items = epoch_items(factors, 11, epoch)
        assert interleaved[: len(items)] == items  # rank r holds positions r, r + world, ...
        assert interleaved[len(items) :] == items[: len(interleaved) - len(items)]  # padding repeats the start


def test_grouped_batches_of_repeated_items_keep_their_groups_and_seed_each_copy_apart():
    factors = np.array(FACTORS) * 2  # every image at least twice
    group_ids = [0, 1] * 5
    sampler = RepeatFactorSampler(factors, seed=1)
    sampler.set_epoch(4)
    batches = list(GroupedBatchSampler(sampler, group_ids, batch_size=2, tag_epoch=True))
    items = [item for batch in batches for item in batch]  # (index, epoch) or (index, epoch, copy > 0)
    assert all(t[1] == 4 and (len(t) == 2 or len(t) == 3 and t[2] > 0) for t in items)
    assert sorted((t[0], t[2] if len(t) == 3 else 0) for t in items) == sorted(epoch_items(factors, 1, 4))
    assert len(set(items)) == len(items)  # every showing of an image has its own augmentation seed
    pure = [len({group_ids[t[0]] for t in batch}) == 1 for batch in batches]
    assert all(pure[:-1])  # only the leftovers at the end may mix groups
    assert len(batches) == len(GroupedBatchSampler(sampler, group_ids, batch_size=2)) == 12


def _datamodule(shapes_dir, tmp_path, *extra: str):
    cfg = compose(
        [*TINY, "augmentation=multiscale", "data.check_images=none", "data.sampler=repeat_factor", *extra],
        output_dir=tmp_path / "run",
        data_dir=shapes_dir,
    )
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    return datamodule


def _epoch(datamodule, epoch: int) -> list[tuple[list[int], list[torch.Tensor]]]:
    loader = datamodule.train_dataloader()
    loader.batch_sampler.sampler.set_epoch(epoch)  # what Lightning does before every epoch
    return [([t["image_id"] for t in targets], list(images)) for images, targets in loader]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_resumed_loader_continues_the_epoch_and_repeats_are_augmented_apart(shapes_dir, tmp_path):
    datamodule = _datamodule(shapes_dir, tmp_path, "data.repeat_threshold=0.9")
    epoch1 = _epoch(datamodule, 1)
    factors = image_repeat_factors(datamodule.train_dataset.image_labels(), 0.9)
    images = [img["id"] for img in datamodule.train_dataset.images]
    expected = Counter({images[i]: n for i, n in enumerate(epoch_repeats(factors, datamodule.seed, 1)) if n})
    assert Counter(i for ids, _ in epoch1 for i in ids) == expected and sum(expected.values()) == 17
    assert datamodule.train_epoch_images() == (17, 12)

    shown: dict[int, list[torch.Tensor]] = {}
    for ids, pictures in epoch1:
        for image_id, picture in zip(ids, pictures, strict=True):
            shown.setdefault(image_id, []).append(picture)
    repeated = [p for p in shown.values() if len(p) > 1]
    assert repeated and any(a.shape != b.shape or not torch.equal(a, b) for a, b, *_ in repeated)

    resumed = _datamodule(shapes_dir, tmp_path, "data.repeat_threshold=0.9")
    resumed.load_state_dict({"train_loader": {"batches_done": 3}})
    again = _epoch(resumed, 1)
    assert len(again) == len(epoch1) - 3
    for (ids_a, pics_a), (ids_b, pics_b) in zip(again, epoch1[3:], strict=True):
        assert ids_a == ids_b and all(torch.equal(a, b) for a, b in zip(pics_a, pics_b, strict=True))


def test_training_with_repeat_factor_sampling_trains_the_repeated_epochs(shapes_dir, tmp_path):
    steps_file = tmp_path / "steps.jsonl"
    cfg = compose(
        [
            *TINY,
            "data.sampler=repeat_factor",
            "data.repeat_threshold=0.5",
            "trainer.max_epochs=2",
            "trainer.limit_val_batches=0",
            "validate_after_train=false",
            "logger=none",
            "dataset_report=false",
            "+callbacks.recorder._target_=helpers.step_recorder.StepRecorder",
            f"+callbacks.recorder.path={steps_file}",
        ],
        output_dir=tmp_path / "run",
        data_dir=shapes_dir,
    )
    _, objects = train(cfg)
    trainer, dataset = objects["trainer"], objects["datamodule"].train_dataset
    factors = image_repeat_factors(dataset.image_labels(), 0.5)
    assert epoch_length(factors) == 13  # 4 of the 12 images hold the rarest category (r = 1.22)
    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    assert (summary["train_epoch_images"], summary["train_images"], summary["steps_per_epoch"]) == (13, 12, 7)
    assert (
        "sampling  repeat_factor (threshold 0.5): 13 images per epoch, 12 without repeats"
        in (tmp_path / "run" / "run_summary.txt").read_text()
    )
    # every epoch as long as the schedule was told, with the images its (seed, epoch) draw repeats
    assert trainer.global_step == trainer.estimated_stepping_batches == 14
    steps = read_steps(steps_file)
    ids = [img["id"] for img in dataset.images]
    for epoch in (0, 1):
        shown = Counter(i for s in steps if s["epoch"] == epoch for i in s["image_ids"])
        repeats = epoch_repeats(factors, cfg.seed, epoch)
        assert shown == Counter({ids[i]: int(n) for i, n in enumerate(repeats) if n})
