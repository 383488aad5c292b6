"""Every top-level and group value of the train / eval configs has its type and range checked before anything is
built (``maskrcnn.training.config_types``): one ConfigError naming the key. Hydra's own failure to create the
run directory ends in one line too (``maskrcnn.run_dir_check``)."""

from __future__ import annotations

import errno
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf, open_dict

from helpers.config import TINY, compose
from helpers.scripts import run_entry_point
from maskrcnn.errors import ConfigError
from maskrcnn.run_dir_check import run_dir_problem
from maskrcnn.training.config_types import CONFIG_TYPES, check_config_types
from maskrcnn.training.pipeline import train

BAD = [  # (override, key the message must name)
    ("seed=abc", "seed='abc'"),
    ("seed=-3", "seed=-3"),
    ("data.num_workers=-1", "data.num_workers=-1"),
    ("data.batch_size=0", "data.batch_size=0"),
    ("optimizer.lr_per_16_images=-0.01", "optimizer.lr_per_16_images"),
    ("trainer.max_steps=0", "trainer.max_steps=0"),
    ("trainer.max_epochs=-5", "trainer.max_epochs=-5"),
    ("model.transform.min_size=0", "model.transform.min_size=0"),
    ("model.rpn.nms_thresh=1.5", "model.rpn.nms_thresh"),
    ("model.roi_heads.score_thresh=-0.1", "model.roi_heads.score_thresh"),
    ("data.keep_empty=maybe", "data.keep_empty"),
    ("trainer.precision=17", "trainer.precision=17"),
    ("loss.weights.loss_mask=-1", "loss.weights.loss_mask=-1"),
    ("scheduler.warmup_steps=2.5", "scheduler.warmup_steps=2.5"),
    ("augmentation.name=rotate", "augmentation.name"),
    ("model.rpn.anchor_sizes=[[0]]", "model.rpn.anchor_sizes"),
    ("model.roi_heads.mask_layers=[]", "model.roi_heads.mask_layers=[]"),
    ("trainer.limit_train_batches=1.5", "trainer.limit_train_batches=1.5"),
    ("nonfinite_loss=ignore", "nonfinite_loss"),
    ("data.generate_shapes.image_size=big", "data.generate_shapes.image_size"),
    ("model.backbone.trainable_layers=9", "model.backbone.trainable_layers=9"),
    ("inference.slice.tile_size=8", "inference.slice.tile_size=8"),
    ("inference.slice.overlap=0.95", "inference.slice.overlap=0.95"),
    ("inference.slice.full_image_pass=maybe", "inference.slice.full_image_pass='maybe'"),
    ("inference.slice.tiles_per_batch=0", "inference.slice.tiles_per_batch=0"),
    ("data.sampler=weighted", "data.sampler='weighted'"),
    ("data.repeat_threshold=0", "data.repeat_threshold=0"),
]


@pytest.mark.parametrize("override,key", BAD)
def test_a_bad_value_is_one_config_error_naming_the_key_before_anything_is_built(override, key, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("built something before the config was checked")

    monkeypatch.setattr("maskrcnn.training.pipeline.build_datamodule", never)
    monkeypatch.setattr("maskrcnn.training.pipeline.resolve_ckpt_path", never)
    cfg = compose([*TINY, override], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="must be") as info:
        train(cfg)
    assert str(info.value).startswith(key) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "override",
    ["callbacks.ema.decay=1.0", "callbacks.ema.update_starting_at_step=-1", "callbacks.ema.update_every_n_steps=0"],
)
def test_a_bad_ema_value_is_one_config_error_naming_the_key(override):
    cfg = compose([*TINY, "callbacks=ema", override], output_dir="/tmp/unused")
    with pytest.raises(ConfigError, match="must be") as info:
        check_config_types(cfg)
    assert str(info.value).startswith(override) and "\n" not in str(info.value)


def test_every_shipped_composition_passes():
    options = [
        [],
        ["experiment=coco_r50_1x"],
        ["experiment=nuts_finetune"],
        ["data=coco"],
        ["trainer=ddp"],
        ["augmentation=lsj"],
        ["augmentation=multiscale"],
        ["augmentation=tiles"],
        ["inference.slice.tile_size=512", "augmentation=tiles", "augmentation.tile_size=512"],
        ["loss=focal"],
        ["optimizer=sgd"],
        ["logger=wandb"],
        ["callbacks=ema"],
        ["data.sampler=repeat_factor"],
    ]
    for overrides in options:
        check_config_types(compose(overrides, output_dir="/tmp/unused"))
    for tta in ("none", "flip", "flip_scales"):
        check_config_types(compose(["ckpt_path=x.ckpt", f"tta={tta}"], config_name="eval", output_dir="/tmp/unused"))


@pytest.mark.parametrize(
    "override,message",
    [
        ("augmentation.tile_size=0", "augmentation.tile_size=0 must be a positive integer (at most 16384 pixels)"),
        ("augmentation.tile_min_area=-1", "augmentation.tile_min_area=-1 must be an integer >= 0"),
        ("augmentation.tile_min_visibility=2", "augmentation.tile_min_visibility=2 must be a finite number >= 0,"),
    ],
)
def test_bad_tile_augmentation_values_are_named(override, message):
    tiny = [o for o in TINY if not o.startswith("augmentation.")]  # the tiles option has no resize sizes
    cfg = compose([*tiny, "augmentation=tiles", override], output_dir="/tmp/unused")
    with pytest.raises(ConfigError) as info:
        check_config_types(cfg)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.integers(-5, 5), max_size=3),
)
PLAIN_KEYS = sorted(k for k in CONFIG_TYPES if "*" not in k)


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(PLAIN_KEYS), value=VALUES)
def test_any_value_of_any_key_is_accepted_or_named(key, value):
    cfg = _BASE.copy()
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    stored = OmegaConf.select(cfg, key)
    stored = OmegaConf.to_container(stored) if OmegaConf.is_config(stored) else stored
    if CONFIG_TYPES[key].ok(stored):
        check_config_types(cfg)
    else:
        with pytest.raises(ConfigError) as info:
            check_config_types(cfg)
        assert str(info.value).startswith(f"{key}=") and CONFIG_TYPES[key].what in str(info.value)


_BASE = OmegaConf.create(
    OmegaConf.to_container(
        compose(["trainer=ddp", "loss=focal", "augmentation=lsj"], output_dir="/tmp/unused"), resolve=True
    )
)


def test_entry_point_bad_value_and_unusable_run_dirs_end_in_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    cases = [
        (["seed=abc", f"hydra.run.dir={tmp_path / 'run'}"], "ConfigError: seed='abc' must be an integer"),
        ([f"hydra.run.dir={afile}/run"], f"'{afile}' is a file, not a directory"),
    ]
    for args, expected in cases:
        proc = run_entry_point("src/train.py", *TINY, "data.num_classes=3", *args)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 1 and "Traceback" not in output, output[-3000:]
        lines = [line for line in output.splitlines() if "Error" in line]
        assert len(lines) == 1 and expected in lines[0], output[-3000:]
    assert afile.read_text() == "keep me"


def test_run_dir_problems_are_named_and_nothing_is_created(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("")
    assert run_dir_problem(tmp_path / "afile") == "is an existing file, not a directory"
    (tmp_path / "afile").unlink()
    assert run_dir_problem(tmp_path / "new" / "run") is None and not (tmp_path / "new").exists()
    assert run_dir_problem(tmp_path) is None and list(tmp_path.iterdir()) == []
    assert "No such file" in run_dir_problem("/proc/no-such-process/run")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("tempfile.mkdtemp", read_only)
    assert run_dir_problem(tmp_path / "run") == f"cannot be written in '{tmp_path}' (Read-only file system)"
