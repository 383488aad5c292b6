"""Data problems reached through the config and train(cfg) end as one-line errors naming the key."""

import json

import pytest

from helpers.coco_files import SQUARE, ann, small_datamodule, split_folder
from maskrcnn.errors import DatasetError


# ---------------------------------------------------------------- through the config and train(cfg)
def _folder_cfg(tmp_path, train_annotations, *overrides):
    from helpers.config import TINY, compose

    root = tmp_path / "data"
    root.mkdir()
    train, val = (
        split_folder(root, "train", train_annotations),
        split_folder(root, "val", [ann(1, SQUARE, bbox=[2, 2, 10, 8], area=80)]),
    )
    folder = [o for o in TINY if not o.startswith("data.generate_shapes")]
    return compose(
        [
            *folder,
            "data=folder",
            "data.num_classes=1",
            f"data.root={root}",
            f"data.train.annotation_file={train['annotation_file']}",
            f"data.val.annotation_file={val['annotation_file']}",
            *overrides,
        ],
        output_dir=tmp_path / "run",
    )


def test_augmentation_size_from_the_command_line_is_named(tmp_path):
    from maskrcnn.training.builders import build_datamodule

    with pytest.raises(Exception) as info:  # Hydra's instantiate wraps it in an InstantiationException
        build_datamodule(_folder_cfg(tmp_path, [ann(1, SQUARE)], "augmentation.min_size=0"))
    from maskrcnn.cli import expected_error

    cause = expected_error(info.value)  # what src/train.py prints as its one message
    assert cause is not None and str(cause).startswith("augmentation.min_size=0: must be a whole number")


def test_crowd_only_training_data_stops_before_the_first_step(tmp_path, monkeypatch):
    """Used to train a full run on zero instances and exit 0."""
    from maskrcnn.training.module import MaskRCNNModule
    from maskrcnn.training.pipeline import train

    monkeypatch.setattr(MaskRCNNModule, "training_step", lambda *args: pytest.fail("training started"))
    cfg = _folder_cfg(tmp_path, [{**ann(1, SQUARE), "iscrowd": 1}, {**ann(2, SQUARE, image_id=2), "iscrowd": 1}])
    with pytest.raises(
        DatasetError, match=r"train split \(.*train/ann\.json\): no training instance left: .*2 are crowd"
    ):
        train(cfg)


# ---------------------------------------------------------------- data-module config values are expected errors
@pytest.mark.parametrize(
    "options, pattern",
    [
        ({"bad_images": "ignore"}, r"data\.bad_images='ignore': expected one of"),
        ({"check_images": "fast"}, r"data\.check_images='fast': expected one of"),
        ({"augmentation": {"min_size": 32}}, r"augmentation\.name must be set"),
        (
            {"augmentation": {"name": "default", "min_size": 32, "max_size": 64, "flip": 0.5}},
            r"augmentation='default' with .*'flip': 0\.5.*unexpected keyword",
        ),
    ],
)
def test_data_options_are_config_errors_naming_the_key(tmp_path, options, pattern):
    """A ConfigError ends src/train.py with its one message; a plain ValueError kept Hydra's traceback."""
    from maskrcnn.errors import ConfigError

    with pytest.raises(ConfigError, match=pattern):
        small_datamodule(tmp_path, [ann(1, SQUARE)], **options)


def test_num_classes_mismatch_is_a_config_error(tmp_path):
    from maskrcnn.errors import ConfigError

    dm = small_datamodule(tmp_path, [ann(1, SQUARE)], num_classes=7)
    with pytest.raises(
        ConfigError,
        match=r"data\.num_classes=7 \(model\.num_classes\) but train annotations "
        r".*train/ann\.json have 1 categories: \['thing'\]",
    ):
        dm.setup("fit")


# ---------------------------------------------------------------- evaluation: the checkpoint's categories
def test_eval_rejects_a_val_file_whose_categories_differ_from_the_checkpoint(tmp_path, shapes_dir):
    """The checkpoint's class names label the predictions; a val file naming the ids differently
    would give an AP table under the wrong names."""
    import shutil

    from helpers.config import compose
    from helpers.random_checkpoint import save_random_checkpoint
    from maskrcnn.training.pipeline import evaluate

    ckpt = save_random_checkpoint(tmp_path / "random.ckpt", data_dir=shapes_dir)
    val_dir = tmp_path / "val"
    shutil.copytree(shapes_dir / "shapes" / "val", val_dir)
    doc = json.loads((val_dir / "annotations.json").read_text())
    doc["categories"] = [{**c, "name": "hexagon"} if c["id"] == 2 else c for c in doc["categories"]]
    (val_dir / "annotations.json").write_text(json.dumps(doc))
    overrides = [
        f"ckpt_path={ckpt}",
        f"data.val.image_dir={val_dir}",
        f"data.val.annotation_file={val_dir / 'annotations.json'}",
        "data.num_workers=0",
    ]
    cfg = compose(overrides, config_name="eval", output_dir=tmp_path / "eval", data_dir=tmp_path / "nothing")
    with pytest.raises(
        DatasetError,
        match=r"checkpoint \(.*random\.ckpt\) and the val annotations \(.*val/annotations"
        r"\.json\) give categories different names \(checkpoint vs val: id 2: 'circle' vs 'hexagon'\)",
    ):
        evaluate(cfg, overrides=overrides)
