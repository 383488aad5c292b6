"""Which images each training step sees, through the real Trainer and the default data config.

On a small set with a rare orientation (the microscopy stand-in: 2 portrait of 12 images) the
default must give what a plain shuffling DataLoader gives: random pairs, a new order every epoch,
every image once per epoch, and an order that follows the run's seed (docs/training_parity.md).
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from helpers.config import compose
from hydra.utils import instantiate

from maskrcnn.data.nuclei import generate_nuclei
from maskrcnn.data.sampler import GroupedBatchSampler, aspect_ratio_group_ids, grouping_is_worthwhile


class _RecordBatches(pl.LightningModule):
    """Records the image ids of every training batch; trains nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.batches: list[tuple[int, ...]] = []

    def training_step(self, batch, batch_idx):
        self.batches.append(tuple(sorted(t["image_id"] for t in batch[1])))
        return self.weight.sum() * 0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _batches(splits: dict, tmp_path, seed: int, epochs: int = 4, extra: tuple[str, ...] = ()) -> list[tuple[int, ...]]:
    train, val = splits["train"], splits["val"]
    cfg = compose([
        "data=folder", f"data.root={tmp_path}", "data.num_classes=1", "data.num_workers=0",
        f"data.train.image_dir={train['image_dir']}", f"data.train.annotation_file={train['annotation_file']}",
        f"data.val.image_dir={val['image_dir']}", f"data.val.annotation_file={val['annotation_file']}",
        "model.transform.min_size=64", "model.transform.max_size=96", "data.check_images=none", f"seed={seed}", *extra,
    ], output_dir=tmp_path / "run")
    datamodule = instantiate(cfg.data, _convert_="all")
    module = _RecordBatches()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, use_distributed_sampler=False)
    trainer.fit(module, datamodule=datamodule)
    return module.batches


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory):
    return generate_nuclei(tmp_path_factory.mktemp("nuclei"), seed=0)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_default_training_order_on_a_small_set_is_random_pairs_that_follow_the_seed(nuclei, tmp_path):
    batches = _batches(nuclei, tmp_path, seed=0)
    epochs = [batches[i:i + 6] for i in range(0, len(batches), 6)]
    assert len(epochs) == 4 and all(len(e) == 6 for e in epochs)
    for epoch in epochs:  # every image exactly once per epoch
        assert sorted(i for b in epoch for i in b) == list(range(1, 13))
    assert len({tuple(e) for e in epochs}) == 4  # the Trainer's set_epoch reaches our sampler
    portrait = (4, 10)  # ids of the 2 portrait images (520x696)
    assert any(b != portrait and set(b) & set(portrait) for b in batches)  # not always paired together
    assert _batches(nuclei, tmp_path, seed=1, epochs=1) != epochs[0]  # the order follows the run's seed


def test_grouping_auto_keeps_grouping_for_large_groups():
    assert not grouping_is_worthwhile([0] * 10 + [1] * 2, batch_size=2)
    assert not grouping_is_worthwhile([0] * 40, batch_size=2)  # one orientation: nothing to group
    assert grouping_is_worthwhile([0] * 40 + [1] * 16, batch_size=2)
    ratios = [1.33] * 40 + [0.75] * 16
    batches = list(GroupedBatchSampler(range(56), aspect_ratio_group_ids(ratios), 2))
    assert all(len({ratios[i] for i in b}) == 1 for b in batches)
