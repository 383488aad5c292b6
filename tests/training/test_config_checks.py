"""Config values are checked where they are read: a bad one stops the run before the first
training step with a ConfigError naming the key, never a TypeError or torch's message."""

from __future__ import annotations

import logging

import pytest

from helpers.config import compose
from maskrcnn.errors import ConfigError
from maskrcnn.training.config_checks import check_transform_sizes, positive_float, positive_int
from maskrcnn.training.module import MaskRCNNModule
from maskrcnn.training.pipeline import train


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if any training step runs."""

    def step(self, batch, batch_idx):
        raise AssertionError("training started")

    monkeypatch.setattr(MaskRCNNModule, "training_step", step)


def test_value_checks():
    assert positive_int(4, "k") == 4 and positive_int(4.0, "k") == 4
    for bad in (0, -1, 2.5, "two", True, None):
        with pytest.raises(ConfigError, match=rf"^k={bad!r} must be a positive integer"):
            positive_int(bad, "k")
    assert positive_float(0.02, "lr") == 0.02 and positive_float(1, "lr") == 1.0
    for bad in (0, -0.005, float("nan"), float("inf"), "fast", False):
        with pytest.raises(ConfigError, match=r"^lr=.* must be a positive finite number"):
            positive_float(bad, "lr")
    check_transform_sizes({"min_size": [640, 672, 800], "max_size": 1333})
    with pytest.raises(ConfigError, match=r"model\.transform\.min_size\[1\]=0"):
        check_transform_sizes({"min_size": [640, 0], "max_size": 1333})
    with pytest.raises(ConfigError, match=r"model\.transform\.min_size=\[\]"):
        check_transform_sizes({"min_size": []})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=-1", r"data\.batch_size=-1 must be a positive integer"),
        ("data.batch_size=0", r"data\.batch_size=0 must be a positive integer"),
        ("optimizer.lr_per_16_images=-1", r"optimizer\.lr_per_16_images=-1 must be a positive finite number"),
        ("optimizer.lr_per_16_images=nan", r"optimizer\.lr_per_16_images=nan must be a positive finite number"),
        ("data.num_classes=two", r"data\.num_classes='two' must be a positive integer"),
        ("data.num_classes=0", r"data\.num_classes=0 must be a positive integer"),
        ("model.transform.min_size=0", r"model\.transform\.min_size=0 must be a positive integer"),
        # the class head must match the data (it would fail inside a training / validation step)
        (
            "model.num_classes=7",
            r"model\.num_classes=7 but data\.num_classes=3: the class head must have one "
            r"output per dataset category \(drop the model\.num_classes override",
        ),
        ("model.num_classes=2", r"model\.num_classes=2 but data\.num_classes=3"),
        ("model.num_classes=0", r"model\.num_classes=0 must be a positive integer"),
        ("model.transform.max_size=-64", r"model\.transform\.max_size=-64 must be a positive integer"),
        ("trainer.accumulate_grad_batches=0", r"trainer\.accumulate_grad_batches=0 must be a positive integer"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(tiny, shapes_dir, tmp_path, no_training, override, message):
    cfg = compose([*tiny, override], output_dir=tmp_path, data_dir=shapes_dir)
    with pytest.raises(ConfigError, match=message):
        train(cfg)


def test_a_batch_larger_than_the_training_set_is_named(tiny, shapes_dir, tmp_path, caplog):
    cfg = compose(
        [
            *tiny,
            "data.batch_size=1000",
            "trainer.max_steps=1",
            "trainer.limit_val_batches=0",
            "validate_after_train=false",
        ],
        output_dir=tmp_path,
        data_dir=shapes_dir,
    )
    with caplog.at_level(logging.WARNING):
        _, objects = train(cfg)
    warning = next(r.getMessage() for r in caplog.records if "one epoch cannot fill one step" in r.getMessage())
    assert "data.batch_size=1000" in warning and "only 12 images" in warning
    assert f"LR ({objects['module'].lr:.4g}" in warning and "optimizer.lr_per_16_images" in warning
