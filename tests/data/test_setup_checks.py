"""The data module's setup checks: usable instances, augmentation sizes, categories, mask memory."""

import logging
import re

import pytest

from helpers.coco_files import IMG, SQUARE, ann, make, small_datamodule
from maskrcnn.errors import DatasetError


# ---------------------------------------------------------------- the data module: setup checks
@pytest.mark.parametrize(
    "annotations, reason",
    [
        ([], r"the file has 2 image\(s\) but no annotations"),
        (
            [{**ann(1, SQUARE), "iscrowd": 1}, {**ann(2, SQUARE, image_id=2), "iscrowd": 1}],
            r"of its 2 annotation\(s\), 2 are crowd regions \(iscrowd=1\), which are never training instances",
        ),
        (
            [ann(1, [[1, 1, 5, 5]]), ann(2, [[1, 1, 5, 5, 9, 9]])],
            r"2 were skipped as unusable \(most often: polygon with fewer than 3 points \(2\); "
            r"all listed in .*skipped_train\.jsonl\)",
        ),
    ],
)
def test_zero_training_instances_stop_setup(tmp_path, annotations, reason):
    dm = small_datamodule(tmp_path, annotations)
    with pytest.raises(
        DatasetError, match=r"train split \(.*train/ann\.json\): no training instance left: .*" + reason
    ):
        dm.setup("fit")


def test_zero_training_instances_after_unreadable_images(tmp_path):
    dm = small_datamodule(tmp_path, [ann(1, SQUARE)])
    (tmp_path / "train" / "1.png").write_bytes(b"not a png")
    with pytest.raises(
        DatasetError,
        match=r"train split .*: no training instance left: of its 1 annotation\(s\), "
        r"1 are on images that were excluded as unreadable",
    ):
        dm.setup("fit")


@pytest.mark.parametrize(
    "augmentation, pattern",
    [
        (
            {"name": "default", "min_size": 0, "max_size": 64},
            r"augmentation\.min_size=0: must be a whole number of pixels in 1\.\.16384",
        ),
        ({"name": "default", "min_size": 32, "max_size": "big"}, r"augmentation\.max_size='big'"),
        ({"name": "default", "min_size": 800.5, "max_size": 1333}, r"augmentation\.min_size=800\.5"),
        ({"name": "multiscale", "multiscale_sizes": [640, -1]}, r"augmentation\.multiscale_sizes=-1"),
        ({"name": "lsj", "lsj_scale": [2.0, 0.1]}, r"augmentation\.lsj_scale=\[2\.0, 0\.1\]: must be \[low, high\]"),
    ],
)
def test_augmentation_sizes_are_checked_where_read(tmp_path, augmentation, pattern):
    from maskrcnn.errors import ConfigError

    with pytest.raises(ConfigError, match=pattern):  # an expected error: one message, no traceback
        small_datamodule(tmp_path, [ann(1, SQUARE)], augmentation=augmentation)


def test_resize_that_loses_every_instance_stops_setup(tmp_path):
    """min_size=1 keeps the config valid but shrinks the 40x32 images to 1 px: no instance survives."""
    anns = [ann(1, [[2, 2, 6, 2, 6, 6, 2, 6]]), ann(2, [[30, 20, 34, 20, 34, 24]], image_id=2)]
    dm = small_datamodule(tmp_path, anns, augmentation={"name": "default", "min_size": 1, "max_size": 2})
    with pytest.raises(
        DatasetError,
        match=r"train split .*with augmentation 'default' \(augmentation\.min_size=1, "
        r"augmentation\.max_size=2\) even the largest instances have no pixel left",
    ):
        dm.setup("fit")
    (tmp_path / "ok").mkdir()
    dm = small_datamodule(tmp_path / "ok", anns, augmentation={"name": "default", "min_size": 8, "max_size": 16})
    dm.setup("fit")  # 8 px keeps the larger square: training starts
    assert sum(len(t["labels"]) for _, t in (dm.train_dataset[i] for i in range(2))) >= 1


def test_category_names_must_agree_across_splits(tmp_path):
    dm = small_datamodule(
        tmp_path,
        [ann(1, SQUARE)],
        train_categories=[{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        val_categories=[{"id": 1, "name": "cat"}, {"id": 2, "name": "wolf"}],
    )
    with pytest.raises(
        DatasetError,
        match=r"train \(.*train/ann\.json\) and val \(.*val/ann\.json\) annotation files "
        r"give categories different names \(train vs val: id 2: 'dog' vs 'wolf'\)",
    ):
        dm.setup("fit")


# ---------------------------------------------------------------- memory: what passes setup must load
def test_masks_of_a_crowded_image_are_checked_against_memory(tmp_path, caplog):
    """N masks of one image are allocated together (plus the model's float copy): thousands of
    instances passed setup and then killed the process without a message."""
    from maskrcnn.data.checks.setup import MASK_BYTES_PER_PIXEL, check_mask_memory, pipeline_scale

    images = [IMG, {**IMG, "id": 2, "file_name": "b.png"}]
    anns = [ann(k, SQUARE) for k in range(1, 51)] + [ann(51, SQUARE, image_id=2)]
    ds = make(tmp_path, images=images, annotations=anns)
    need = 50 * 32 * 40 * MASK_BYTES_PER_PIXEL  # image 1 at twice its size (min_size 32 on a 20x16 image)
    scale = pipeline_scale("default", {"min_size": 32, "max_size": 64})
    check_mask_memory(ds, "train", scale, limit=need, warn=need)  # exactly fits: silent
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        check_mask_memory(ds, "train", scale, limit=need, warn=need - 1)
    assert re.search(
        r"train split \(.*ann\.json\): image id 1 \('a\.png'\) has 50 instance and crowd masks; at 40x32 px",
        caplog.text,
    )
    with pytest.raises(
        DatasetError,
        match=r"image id 1 .* has 50 .* need about 0\.0 GiB .*more than this machine's "
        r"0\.0 GiB of memory; lower augmentation\.min_size / max_size",
    ):
        check_mask_memory(ds, "train", scale, limit=need - 1, warn=0)
    with pytest.raises(DatasetError, match=r"val split .* at 20x16 px.*resize the validation images on disk"):
        check_mask_memory(ds, "val", pipeline_scale("none", {}), limit=need // 4 - 1, warn=0)


def test_images_sharing_a_file_are_warned(tmp_path, caplog):
    """Two records of one photo each train with only their own objects: the others become background."""
    images = [IMG, {**IMG, "id": 2}, {**IMG, "id": 3, "file_name": "b.png"}]
    with caplog.at_level(logging.WARNING):
        make(tmp_path, images=images, annotations=[ann(1, SQUARE), ann(2, SQUARE, image_id=2)])
    assert re.search(
        r"ann\.json: 1 file name\(s\) are used by more than one image record, each of which is loaded "
        r"with only its own annotations \('a\.png': image ids \[1, 2\]\)",
        caplog.text,
    )
