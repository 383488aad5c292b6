"""``src/eval.py ckpt_path=X`` rebuilds model and data from the checkpoint's stored config; only the
overrides the user gave change it, never eval.yaml's defaults. Files that are not checkpoints get
an error naming the path, the same in eval and predict (one loader)."""

from __future__ import annotations

import logging

import pytest
import torch

from helpers.config import compose
from maskrcnn.errors import CheckpointError, ConfigError
from maskrcnn.inference.predict_images import load_checkpoint_model
from maskrcnn.run_checkpoint import read_run_checkpoint
from maskrcnn.training.pipeline import config_from_checkpoint, evaluate, train


@pytest.fixture(scope="module")
def trained(tiny, shapes_dir, tmp_path_factory):
    """(checkpoint path, the training run's final validation metrics)."""
    # A run whose model (32-channel FPN, 64 px) and data (its own shapes folder) differ from every
    # eval.yaml default: evaluating it with eval.yaml's composition would not even load the weights.
    out = tmp_path_factory.mktemp("run")
    cfg = compose(
        [
            *tiny,
            "model.roi_heads.score_thresh=0.0",
            "trainer.max_steps=3",
            "callbacks=default",
            "callbacks.rich_progress_bar=null",
            "callbacks.model_checkpoint.monitor=null",
            "validate_after_train=true",
        ],
        output_dir=out,
        data_dir=shapes_dir,
    )
    metrics, _ = train(cfg)
    return out / "checkpoints" / "last.ckpt", metrics


def _eval_cfg(tmp_path, *overrides):
    # paths.data_dir points at an empty folder: any data the evaluation uses comes from the checkpoint.
    return compose([*overrides], config_name="eval", output_dir=tmp_path / "eval", data_dir=tmp_path / "nothing")


def test_eval_rebuilds_model_and_data_from_the_checkpoint(trained, tmp_path):
    ckpt, train_metrics = trained
    overrides = [f"ckpt_path={ckpt}", "data.num_workers=0"]
    metrics = evaluate(_eval_cfg(tmp_path, *overrides), overrides=overrides)
    for key in ("val/bbox_AP", "val/segm_AP", "val/segm_AP50"):
        assert metrics[key] == pytest.approx(train_metrics[key], abs=1e-9), key
    assert not (tmp_path / "nothing").exists()  # eval.yaml's shapes data was never generated


def test_overrides_apply_on_top_of_the_stored_config(trained, tmp_path, caplog):
    ckpt, _ = trained
    # 300 detections on every image (score_thresh=0, 1000 proposals): pycocotools' mask.area used
    # to overflow above 255. detections_per_img is also COCO maxDets (AR300).
    overrides = [
        f"ckpt_path={ckpt}",
        "model.roi_heads.detections_per_img=300",
        "model.rpn.pre_nms_top_n_test=1000",
        "model.rpn.post_nms_top_n_test=1000",
        "data.num_workers=0",
    ]
    with caplog.at_level(logging.INFO):
        metrics = evaluate(_eval_cfg(tmp_path, *overrides), overrides=overrides)
    assert "val/bbox_AR300" in metrics and "val/bbox_AR100" not in metrics
    assert "model.roi_heads.detections_per_img=300" in caplog.text


def test_config_from_checkpoint_takes_only_what_the_user_wrote(tiny, tmp_path):
    stored = compose([*tiny, "data.batch_size=3", "model.roi_heads.score_thresh=0.2"], output_dir=tmp_path)
    from omegaconf import OmegaConf

    run_config = OmegaConf.to_container(stored, resolve=True)
    run_config["model"]["backbone"]["pretrained"] = True  # must not download at eval
    run_config["model"]["init_from"] = "torchvision:maskrcnn_resnet50_fpn_coco"
    overrides = [
        "model.roi_heads.score_thresh=0.01",
        "data.val.annotation_file=/elsewhere/val.json",
        "~data.generate_shapes",
        "trainer.accelerator=cpu",
    ]
    cfg = compose(overrides, config_name="eval", output_dir=tmp_path / "eval")
    merged = config_from_checkpoint(cfg, run_config, overrides)
    assert merged.model.roi_heads.score_thresh == 0.01  # the override
    assert merged.model.backbone.out_channels == 32  # stored, not eval.yaml's experiment default (64)
    assert merged.model.transform.min_size == 64
    assert merged.model.backbone.pretrained is False and merged.model.init_from is None
    assert merged.data.batch_size == 3  # stored, not shapes.yaml's 4
    assert merged.data.val.annotation_file == "/elsewhere/val.json"
    assert merged.data.val.image_dir == run_config["data"]["val"]["image_dir"]
    assert "generate_shapes" not in merged.data
    assert merged.data.skipped_log_dir == str(tmp_path / "eval")  # this run's directory
    assert merged.loss == OmegaConf.create(run_config["loss"])
    # Choosing a group replaces the whole section with this run's composition.
    cfg = compose(["data=shapes", "data.batch_size=7"], config_name="eval", output_dir=tmp_path / "eval")
    merged = config_from_checkpoint(cfg, run_config, ["data=shapes", "data.batch_size=7"])
    assert merged.data.batch_size == 7 and merged.data.generate_shapes.num_train == cfg.data.generate_shapes.num_train
    assert merged.model.backbone.out_channels == 32


def test_files_that_are_not_checkpoints_are_named(tmp_path, trained):
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    weights = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(1)}, weights)
    no_config = tmp_path / "old.ckpt"
    torch.save({"state_dict": {"net.x": torch.zeros(1)}}, no_config)
    for path, match in [
        (text, "is a text file, not a checkpoint"),
        (weights, "is a torch file but not a training checkpoint"),
        (no_config, "has no stored run config"),
    ]:
        with pytest.raises(CheckpointError, match=rf"ckpt_path='{path}' {match}"):
            evaluate(_eval_cfg(tmp_path, f"ckpt_path={path}"))
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint_model(path)  # predict and export share the loader
    with pytest.raises(ConfigError, match="ckpt_path='missing.ckpt'.*does not exist"):
        evaluate(_eval_cfg(tmp_path, "ckpt_path=missing.ckpt"))
    with pytest.raises(CheckpointError, match="is a directory"):
        read_run_checkpoint(tmp_path)


def test_an_override_that_changes_the_architecture_is_named(trained, tmp_path):
    ckpt, _ = trained
    overrides = [f"ckpt_path={ckpt}", "model.backbone.out_channels=16"]
    with pytest.raises(CheckpointError, match=r"built for another architecture.*backbone.fpn"):
        evaluate(_eval_cfg(tmp_path, *overrides), overrides=overrides)
