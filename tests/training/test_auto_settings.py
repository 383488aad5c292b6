"""model.rpn.anchor_sizes=auto: resolved from the training data before the model is built."""

import pytest
from omegaconf import OmegaConf

from bench.cells import generate_cells
from helpers.config import compose
from maskrcnn.training.auto_settings import STANDARD_ANCHORS, resolve_auto_settings
from maskrcnn.training.builders import build_datamodule


def _cfg(data_overrides, tmp_path):
    return compose(["model=resnet18_fpn", "model.rpn.anchor_sizes=auto", *data_overrides], output_dir=tmp_path)


def test_auto_anchors_fit_small_objects_and_keep_the_standard_set_for_large_ones(tmp_path):
    paths = generate_cells(tmp_path / "cells", num_train=3, num_val=1, seed=1)
    cfg = _cfg(
        [
            "data=folder",
            f"data.root={tmp_path / 'cells'}",
            "data.num_classes=1",
            "model.transform.min_size=512",
            "model.transform.max_size=683",
        ],
        tmp_path,
    )
    resolve_auto_settings(cfg, build_datamodule(cfg))
    anchors = OmegaConf.to_container(cfg.model.rpn.anchor_sizes)
    assert anchors[0][0] < 32 and [a[0] * 2 for a in anchors[:-1]] == [a[0] for a in anchors[1:]]
    assert paths["train"]["annotation_file"].endswith("annotations.json")

    nuts = _cfg(["data=nuts"], tmp_path)  # 95-280 px objects at 800 px: the standard anchors fit
    resolve_auto_settings(nuts, build_datamodule(nuts))
    assert OmegaConf.to_container(nuts.model.rpn.anchor_sizes) == STANDARD_ANCHORS


def test_auto_anchors_on_generated_data_generate_it_first(tmp_path):
    cfg = _cfg(
        [
            f"paths.data_dir={tmp_path / 'fresh'}",
            "data.generate_shapes.num_train=4",
            "data.generate_shapes.num_val=2",
            "data.generate_shapes.image_size=64",
        ],
        tmp_path,
    )
    resolve_auto_settings(cfg, build_datamodule(cfg))
    assert cfg.model.rpn.anchor_sizes != "auto" and (tmp_path / "fresh" / "shapes" / "meta.json").is_file()


def test_explicit_anchors_are_left_alone(tmp_path):
    cfg = compose(["data=nuts", "model=resnet18_fpn"], output_dir=tmp_path)
    before = OmegaConf.to_container(cfg.model.rpn.anchor_sizes)
    resolve_auto_settings(cfg, None)  # never touches the data when nothing is auto
    assert OmegaConf.to_container(cfg.model.rpn.anchor_sizes) == before


def test_auto_anchors_say_when_json_boxes_disagree_with_the_masks(tmp_path, caplog):
    """The choice is measured from the masks, as training does; a json bbox that disagrees is named
    in the log even when the dataset-fit report itself is off (dataset_report=false)."""
    import json
    import logging

    from helpers.config import ROOT

    data = json.loads((ROOT / "tests/assets/nuts/annotations.json").read_text())
    wrong = data["annotations"][0]
    wrong["bbox"] = [0, 0, 10, 10]
    ann_file = tmp_path / "nuts_wrong_bbox.json"
    ann_file.write_text(json.dumps(data))
    cfg = _cfg(["data=nuts", f"data.train.annotation_file={ann_file}", "dataset_report=false"], tmp_path)
    with caplog.at_level(logging.WARNING):
        resolve_auto_settings(cfg, build_datamodule(cfg))
    assert OmegaConf.to_container(cfg.model.rpn.anchor_sizes) == STANDARD_ANCHORS  # the wrong box is not used
    message = next(r.getMessage() for r in caplog.records if "disagrees with their mask" in r.getMessage())
    assert message.startswith("model.rpn.anchor_sizes=auto: train: ") and str(ann_file) in message
    assert f"annotation {wrong['id']} (image {wrong['image_id']}): bbox [0, 0, 10, 10]" in message


def test_a_run_that_never_resizes_measures_objects_at_their_file_size(tmp_path):
    """augmentation=tiles (and none/hflip without a model-side resize) trains at file resolution, so
    the run's dataset-fit report and ``anchor_sizes=auto`` measure objects at their file size; with
    the default augmentation the same objects are measured at the resize's scale."""
    from bench.large_images import generate_large_images
    from maskrcnn.data.fit.report import compute_fit_report
    from maskrcnn.training.run_summary import describe_config, fit_report

    paths = generate_large_images(tmp_path / "large", num_train=1, num_val=1, image_size=(1024, 768), seed=3)
    train_file = paths["train"]["annotation_file"]
    data = ["data=folder", f"data.root={tmp_path / 'large'}", "data.num_classes=2", "model.transform.min_size=256"]
    native = compute_fit_report(train_file, min_size=None).splits["train"].sizes

    def sizes(overrides):
        settings = describe_config(_cfg([*data, *overrides], tmp_path))
        return fit_report(settings, train_file, anchor_sizes=STANDARD_ANCHORS).splits["train"].sizes

    for augmentation in ("augmentation=tiles", "augmentation=none", "augmentation=hflip"):
        assert sizes([augmentation]) == native, augmentation
    resized = sizes([])
    assert resized["p50"] == pytest.approx(native["p50"] * 256 / 768, rel=0.02)
    # hflip with torchvision's model-side resize trains at the model's scale again
    assert sizes(["augmentation=hflip", "model.transform.resize_in_training=true"]) == resized

    tiles = _cfg([*data, "augmentation=tiles"], tmp_path)
    plain = _cfg(data, tmp_path)
    for cfg in (tiles, plain):
        resolve_auto_settings(cfg, build_datamodule(cfg))
    # 10-40 px objects: the tiles run's anchors are the ones fitted at file size, the plain run's at a third of it
    at_file_size = compute_fit_report(train_file, min_size=None, anchor_sizes=STANDARD_ANCHORS).suggestion
    assert OmegaConf.to_container(tiles.model.rpn.anchor_sizes) == at_file_size.anchor_sizes
    assert OmegaConf.to_container(plain.model.rpn.anchor_sizes)[0][0] < at_file_size.anchor_sizes[0][0]
