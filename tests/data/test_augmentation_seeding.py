"""Every training image's augmentation is seeded by (data seed, epoch, index) alone.

So the augmented batches of an epoch are the same with 0 or 2 loader workers, and a loader resumed
after k batches yields exactly the batches k+1.. of the uninterrupted epoch: what makes a resumed
run equal the uninterrupted one with random augmentation on (tests/training/test_interrupts.py).
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from helpers.config import TINY, compose
from maskrcnn.data.sampler import sample_seed


def _datamodule(shapes_dir, tmp_path, *extra: str):
    cfg = compose(
        [*TINY, "augmentation=multiscale", "data.check_images=none", *extra],
        output_dir=tmp_path / "run",
        data_dir=shapes_dir,
    )
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    return datamodule


def _epoch(datamodule, epoch: int) -> list[tuple[torch.Tensor, ...]]:
    """(image ids, images, boxes) of every batch of ``epoch``, images/boxes flattened per batch."""
    loader = datamodule.train_dataloader()
    loader.batch_sampler.sampler.set_epoch(epoch)  # what Lightning does before every epoch
    out = []
    for images, targets in loader:
        ids = torch.tensor([t["image_id"] for t in targets])
        out.append((ids, torch.cat([i.flatten() for i in images]), torch.cat([t["boxes"].flatten() for t in targets])))
    return out


def _assert_same(a, b) -> None:
    assert len(a) == len(b)
    for batch_a, batch_b in zip(a, b, strict=True):
        for x, y in zip(batch_a, batch_b, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_augmented_batches_do_not_depend_on_workers_or_on_what_came_before(shapes_dir, tmp_path):
    single = _datamodule(shapes_dir, tmp_path)
    epoch0, epoch1 = _epoch(single, 0), _epoch(single, 1)
    # random scale and flip really act: sizes differ between the epochs of the same image
    sizes = {int(ids[0]): b.numel() for ids, b, _ in epoch0}
    assert any(sizes.get(int(ids[0]), b.numel()) != b.numel() for ids, b, _ in epoch1)

    _assert_same(_epoch(_datamodule(shapes_dir, tmp_path, "data.num_workers=2"), 1), epoch1)
    _assert_same(_epoch(single, 1), epoch1)  # again, after the RNG streams moved on

    resumed = _datamodule(shapes_dir, tmp_path)
    resumed.load_state_dict({"train_loader": {"batches_done": 2}})
    _assert_same(_epoch(resumed, 1), epoch1[2:])
    _assert_same(_epoch(resumed, 0), epoch0)  # the next iteration is a whole epoch


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_another_data_seed_augments_differently(shapes_dir, tmp_path):
    seed0 = _epoch(_datamodule(shapes_dir, tmp_path, "data.seed=0", "data.aspect_ratio_grouping=false"), 0)
    seed1 = _datamodule(shapes_dir, tmp_path, "data.seed=1", "data.aspect_ratio_grouping=false")
    seed1.train_dataloader()  # builds the dataset; items are then read directly, in the same order
    dataset = seed1.train_dataset
    same = 0
    for ids, images, _ in seed0:
        index = [i for i, img in enumerate(dataset.images) if img["id"] == int(ids[0])][0]
        image, _ = dataset[(index, 0)]
        same += image.shape == images[: image.numel()].shape and torch.equal(image.flatten(), images[: image.numel()])
    assert same < len(seed0)


def test_sample_seed_depends_on_each_of_its_numbers():
    seeds = {sample_seed(s, e, i) for s in range(3) for e in range(3) for i in range(3)}
    assert len(seeds) == 27
    assert sample_seed(5, 1, 2) == sample_seed(5, 1, 2) and 0 <= sample_seed(-1, 0, 0) < 2**32
