"""model.rpn.anchor_sizes=auto: resolved from the training data before the model is built."""

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
