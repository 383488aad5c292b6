"""The W&B dashboard: what an OFFLINE run holds when read back from its files (native mask/box
layers of fixed validation images, the per-class AP table, PR curves, checkpoint artifacts, run
config), the pieces that build it, and the sweep configs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from bench.wandb_run_reader import latest_offline_run, read_offline_run
from helpers.config import CONF, ROOT, compose
from maskrcnn.training.wandb_media import flatten_masks, make_sample, to_wandb_image

NAMES = ["__background__", "square", "circle", "triangle"]


# ------------------------------------------------------------------ the offline run, end to end
@pytest.fixture(scope="module")
def wandb_run(tiny, shapes_dir, tmp_path_factory):
    """A tiny 2-epoch run logging to W&B (offline) and CSV, read back from disk."""
    import wandb

    from maskrcnn.training.pipeline import train

    out = tmp_path_factory.mktemp("wandb_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_DATA_DIR", str(out / "wandb_data"))  # artifact staging copies
        mp.setenv("WANDB_CACHE_DIR", str(out / "wandb_cache"))
        cfg = compose(
            [
                *tiny,
                "logger=[wandb,csv,tensorboard]",
                "log_val_images=3",
                "trainer.max_epochs=2",
                "trainer.limit_train_batches=1",
                "callbacks=default",
                "callbacks.rich_progress_bar=null",
                "logger.wandb.log_model=true",
                "validate_after_train=false",
                "model.roi_heads.score_thresh=0.0",  # always some detections
                "logger.wandb_dashboard.box_score_thresh=0.0",
                "logger.wandb_dashboard.mask_score_thresh=0.0",
            ],
            output_dir=out,
            data_dir=shapes_dir,
        )
        _, objects = train(cfg)
        wandb.finish()  # flush the run file, as the end of the process would
    val_dir = shapes_dir / "shapes" / "val"
    run = read_offline_run(latest_offline_run(out), wait_s=60)
    assert run.finished
    return {
        "run": run,
        "out": out,
        "module": objects["module"],
        "val_json": json.loads((val_dir / "annotations.json").read_text()),
        "val_dir": val_dir,
    }


def _validation_rows(run) -> list[dict]:
    return [row for row in run.history if "val/per_class_AP" in row]


def test_samples_are_native_images_with_prediction_and_ground_truth_layers(wandb_run):
    from maskrcnn.data.coco import CocoInstanceDataset

    run, rows = wandb_run["run"], _validation_rows(wandb_run["run"])
    assert len(rows) == 2  # one per epoch
    dataset = CocoInstanceDataset(wandb_run["val_dir"], wandb_run["val_dir"] / "annotations.json", for_evaluation=True)
    sample_ids = [img["id"] for img in dataset.images[:3]]  # the first 3 by index, every epoch
    for row in rows:
        assert sorted(k for k in row if k.startswith("val/samples/")) == sorted(f"val/samples/{i}" for i in sample_ids)
    assert "val/predictions" not in run.keys()  # W&B gets native layers, not burnt-in pictures
    mask_labels = run.config["_wandb"]["mask/class_labels"]
    for index, image_id in enumerate(sample_ids):
        key = f"val/samples/{image_id}"
        logged = rows[-1][key]
        image = np.asarray(Image.open(run.files_dir / logged["path"]))
        _, target = dataset[index]
        assert image.shape[:2] == tuple(target["masks"].shape[1:])
        assert set(logged["masks"]) == set(logged["boxes"]) == {"predictions", "ground_truth"}
        # Ground-truth layer: the dataset's instance masks, flattened, pixel for pixel.
        gt_map = np.asarray(Image.open(run.files_dir / logged["masks"]["ground_truth"]["path"]))
        masks = target["masks"].numpy().astype(bool)
        expected = flatten_masks(
            masks, target["labels"].numpy(), np.argsort(-masks.sum((1, 2)), kind="stable"), image.shape[:2]
        )
        np.testing.assert_array_equal(gt_map, expected)
        assert set(np.unique(gt_map)) - {0} == set(target["labels"].tolist())
        gt_boxes = json.loads((run.files_dir / logged["boxes"]["ground_truth"]["path"]).read_text())
        assert [b["class_id"] for b in gt_boxes["box_data"]] == target["labels"].tolist()
        np.testing.assert_allclose(
            [[b["position"][k] for k in ("minX", "minY", "maxX", "maxY")] for b in gt_boxes["box_data"]],
            target["boxes"].numpy(),
        )
        # Prediction layers: a label map of the image size and boxes with scores and class names.
        pred_map = np.asarray(Image.open(run.files_dir / logged["masks"]["predictions"]["path"]))
        assert pred_map.shape == image.shape[:2] and set(np.unique(pred_map)) <= {0, 1, 2, 3}
        pred_boxes = json.loads((run.files_dir / logged["boxes"]["predictions"]["path"]).read_text())["box_data"]
        assert pred_boxes, "score_thresh=0 keeps detections"
        scores = [b["scores"]["score"] for b in pred_boxes]
        assert scores == sorted(scores, reverse=True)
        for box in pred_boxes:
            assert box["box_caption"] == f"{NAMES[box['class_id']]} {box['scores']['score']:.2f}"
        for layer in ("predictions", "ground_truth"):
            labels = mask_labels[f"{key}_wandb_delimeter_{layer}"]["value"]
            assert labels == {"0": "background", "1": "square", "2": "circle", "3": "triangle"}
    # TensorBoard/CSV keep burnt-in pictures (batch 0: 2 images, 2 epochs): PNG files of the CSV
    # logger, images in the TensorBoard event file.
    assert len(list((wandb_run["out"] / "csv").rglob("val_images/*.png"))) == 4
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((wandb_run["out"] / "tensorboard").rglob("events.out.*")).parent), {"images": 0})
    events.Reload()
    tags = events.Tags()["images"]
    assert sorted(tags) == [f"val/predictions/{i}" for i in sample_ids[:2]]
    assert all(len(events.Images(tag)) == 2 for tag in tags)


def test_per_class_table_matches_the_evaluation(wandb_run):
    run, module = wandb_run["run"], wandb_run["module"]
    last = _validation_rows(run)[-1]
    table = run.table(last["val/per_class_AP"])
    assert table["columns"] == ["class", "instances", "bbox AP", "bbox AP50", "segm AP", "segm AP50"]
    names = {c["id"]: c["name"] for c in wandb_run["val_json"]["categories"]}
    instances = Counter(names[a["category_id"]] for a in wandb_run["val_json"]["annotations"] if not a.get("iscrowd"))
    assert [row[:2] for row in table["data"]] == [[n, instances[n]] for n in ("square", "circle", "triangle")]
    # The numbers are those of the evaluation that ran (the module's evaluator, last epoch) ...
    expected = module.evaluator.per_category_results()
    for row, ref in zip(table["data"], expected, strict=True):
        assert row[2:] == pytest.approx([ref["bbox_AP"], ref["bbox_AP50"], ref["segm_AP"], ref["segm_AP50"]])
    # ... and COCO AP is their mean over the classes.
    segm_ap = [row[4] for row in table["data"] if row[4] is not None]
    assert np.mean(segm_ap) == pytest.approx(
        last["val/segm_AP"] if "val/segm_AP" in last else module.last_val_metrics["segm_AP"]
    )


def test_pr_curves_are_line_series_of_the_coco_precision_array(wandb_run):
    run, module = wandb_run["run"], wandb_run["module"]
    last = _validation_rows(run)[-1]
    for iou_type in ("bbox", "segm"):
        panel = run.config["_wandb"]["visualize"][f"val/pr_curve/{iou_type}"]["panel_config"]
        assert panel["panelDefId"] == "wandb/lineseries/v0"
        table = run.table(last[f"val/pr_curve/{iou_type}_table"])
        assert table["columns"] == ["step", "lineKey", "lineVal"]
        recall, curves = module.evaluator.precision_recall(iou_type, 0.5)
        assert len(curves) == 3  # every class has ground truth in the 5 val images
        for category_id, precision in curves.items():
            name = NAMES[category_id]  # shapes: category ids are the labels
            points = [(x, y) for x, key, y in table["data"] if key == name]
            assert [x for x, _ in points] == pytest.approx(recall.tolist())
            assert [y for _, y in points] == pytest.approx(precision.tolist())
        assert recall[0] == 0.0 and recall[-1] == 1.0 and len(recall) == 101


def test_checkpoints_are_artifacts_with_the_metric_in_the_alias(wandb_run):
    models = [a for a in wandb_run["run"].artifacts if a["type"] == "model"]
    assert models and all(a["files"] == ["model.ckpt"] for a in models)
    best = [a for a in models if "best" in a["aliases"]]
    assert best
    for artifact in best:
        score = artifact["metadata"]["score"]
        assert f"segmAP-{score:.4f}" in artifact["aliases"]
        assert artifact["metadata"]["original_filename"] == "best.ckpt"
    assert any(a["metadata"]["original_filename"] == "last.ckpt" and "latest" in a["aliases"] for a in models)
    for artifact in models:
        assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", alias) for alias in artifact["aliases"])


def test_run_config_has_the_resolved_config_and_a_dataset_summary(wandb_run):
    config, val_json = wandb_run["run"].config, wandb_run["val_json"]
    assert config["model"]["num_classes"] == 3 and config["data"]["batch_size"] == 2
    assert (
        config["optimizer"]["lr_per_16_images"] == 0.004
        and config["optimizer"]["fn"]["_target_"] == "torch.optim.AdamW"
    )
    assert "${" not in json.dumps({k: v for k, v in config.items() if k != "_wandb"})  # resolved
    summary = config["dataset"]
    assert summary["class_names"] == NAMES[1:]
    assert summary["val"]["images"] == len(val_json["images"]) == 5
    assert summary["train"]["images"] == 12
    assert (
        summary["val"]["instances"]
        == sum(summary["val"]["instances_per_class"].values())
        == len(val_json["annotations"])
    )
    # The run summary and the dataset-fit report printed at start-up are run config too.
    assert config["run_summary"]["images_per_step"] == 2 and config["run_summary"]["train_images"] == 12
    fit = config["dataset_fit"]
    assert fit["splits"]["val"]["instances"] == len(val_json["annotations"]) and "suggestion" in fit


def test_render_script_draws_the_logged_layers(wandb_run, tmp_path, capsys):
    from helpers.scripts import load_script

    script = load_script("render_wandb_overlay")
    out = tmp_path / "overlay.png"
    script.main([str(wandb_run["out"]), "--out", str(out), "--scale", "2", "--min-score", "0"])
    grid = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert grid.shape[0] > 3 * 128 and grid.shape[1] > 3 * 128  # 3 images x 3 panels of 64 px x 2
    # The ground-truth panel is the image with masks painted over it: the two differ.
    pad, header, side = 6, 18, 128
    top = header + pad
    image = grid[top : top + side, pad : pad + side]
    ground_truth = grid[top : top + side, 2 * pad + side : 2 * pad + 2 * side]
    assert np.abs(image - ground_truth).max() > 50
    printed = capsys.readouterr().out
    assert "| class | instances | bbox AP | bbox AP50 | segm AP | segm AP50 |" in printed and "| triangle |" in printed


# ------------------------------------------------------------------ the pieces
def _detection(masks, labels, scores, boxes):
    return {
        "masks": torch.tensor(np.asarray(masks, dtype=np.float32))[:, None],
        "labels": torch.tensor(labels),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "boxes": torch.tensor(boxes, dtype=torch.float32),
    }


def test_overlapping_masks_flatten_higher_score_wins_and_small_ground_truth_on_top():
    h, w = 20, 30
    big, small, other = (np.zeros((h, w), np.float32) for _ in range(3))
    big[2:18, 2:25] = 1
    small[5:10, 5:12] = 1
    other[0:4, 0:4] = 1
    # Detections: label 2 (score 0.6) overlaps label 1 (score 0.9); label 3 (0.3) is below the mask threshold.
    det = _detection([small, big, other], [2, 1, 3], [0.6, 0.9, 0.3], [[5, 5, 12, 10], [2, 2, 25, 18], [0, 0, 4, 4]])
    target = {
        "image_id": 7,
        "labels": torch.tensor([1, 2]),
        "boxes": torch.tensor([[2, 2, 25, 18], [5, 5, 12, 10]], dtype=torch.float32),
        "masks": torch.tensor(np.stack([big, small]).astype(np.uint8)),
    }
    sample = make_sample(torch.rand(3, h, w), target, det, mask_score_thresh=0.5, box_score_thresh=0.05)
    assert (sample.pred_label_map[5:10, 5:12] == 1).all()  # higher score wins the overlap
    assert (sample.pred_label_map[0:2, 0:2] == 0).all()  # below the mask threshold
    assert (sample.gt_label_map[5:10, 5:12] == 2).all() and sample.gt_label_map[15, 20] == 1  # small on top
    assert sample.pred_scores.tolist() == pytest.approx([0.9, 0.6, 0.3])  # every box, highest first
    assert sample.pred_labels.tolist() == [1, 2, 3]
    # Masks given as RLE (model.mask_format=rle) give the same layer.
    from pycocotools import mask as mask_utils

    rle_det = dict(det, masks=[mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in (small, big, other)])
    np.testing.assert_array_equal(
        make_sample(torch.rand(3, h, w), target, rle_det).pred_label_map, sample.pred_label_map
    )
    image = to_wandb_image(sample, NAMES)
    assert set(image._masks) == set(image._boxes) == {"predictions", "ground_truth"}
    with pytest.raises(ValueError, match="image 7: predicted masks"):
        make_sample(torch.rand(3, h + 1, w), dict(target, masks=torch.zeros(2, h + 1, w, dtype=torch.uint8)), det)


def test_wandb_init_gets_no_anonymous_setting(monkeypatch, tmp_path):
    """Lightning's WandbLogger passes anonymous=None, which wandb answers with "The anonymous setting
    has no effect"; our logger does not pass it."""
    import wandb

    from maskrcnn.loggers import build_wandb_logger, metric_alias

    calls = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: calls.append(kwargs) or object())
    monkeypatch.setattr(wandb, "run", None)
    logger = build_wandb_logger(project="p", save_dir=str(tmp_path), mode="offline")
    logger.experiment  # noqa: B018 (creates the run)
    assert len(calls) == 1 and "anonymous" not in calls[0] and calls[0]["mode"] == "offline"
    assert metric_alias("val/segm_AP", torch.tensor(0.43121)) == "segmAP-0.4312"
    assert metric_alias(None, 0.5) is None
    with pytest.raises(ValueError, match="logger.wandb.log_model"):
        build_wandb_logger(project="p", save_dir=str(tmp_path), log_model="sometimes")


# ------------------------------------------------------------------ sweeps
def _compose_with_hydra(overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return hydra_compose(
            config_name="train", overrides=[f"paths.root_dir={ROOT}", *overrides], return_hydra_config=True
        )


def test_optuna_sweep_config_composes_and_sweeps_existing_keys():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = _compose_with_hydra(["hparams_search=shapes_optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    for key in sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, key
    # What the sweeper maximises is what src/train.py returns.
    assert 'return metrics.get("val/segm_AP")' in (ROOT / "src" / "train.py").read_text()


def test_wandb_sweep_config_calls_train_with_valid_overrides():
    sweep = yaml.safe_load((CONF / "sweep" / "wandb_shapes.yaml").read_text())
    assert sweep["metric"] == {"name": "val/segm_AP", "goal": "maximize"}
    assert sweep["program"] == "src/train.py" and "${args_no_hyphens}" in sweep["command"]
    overrides = [f"{k}={v['values'][0] if 'values' in v else v['min']}" for k, v in sweep["parameters"].items()]
    cfg = compose(overrides)  # ${args_no_hyphens} hands exactly these key=value overrides to Hydra
    for key, value in (o.split("=") for o in overrides):
        assert str(OmegaConf.select(cfg, key)) == value


@pytest.mark.slow
def test_optuna_sweep_runs_two_trials_and_reports_the_best_segm_ap(tiny, shapes_dir, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    # A swept key fixed on the command line is not searched: leave tiny's batch_size_per_image out.
    unswept = [o for o in tiny if not o.startswith("model.roi_heads.batch_size_per_image")]
    cmd = [
        sys.executable,
        "src/train.py",
        "hparams_search=shapes_optuna",
        "hydra.sweeper.n_trials=2",
        *unswept,
        "validate_after_train=false",
        f"paths.data_dir={shapes_dir}",
        f"paths.log_dir={tmp_path}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = yaml.safe_load(next(tmp_path.rglob("optimization_results.yaml")).read_text())
    assert 0.0 <= results["best_value"] <= 1.0 and set(results["best_params"]) == {
        "optimizer.lr_per_16_images",
        "loss.weights.loss_mask",
        "model.roi_heads.batch_size_per_image",
    }


@pytest.mark.slow
def test_ddp_rank_zero_logs_the_samples_of_every_rank(tiny, shapes_dir, tmp_path, monkeypatch):
    """2 CPU processes: the 5 val images split 3 + 2 over the ranks; all 5 samples (log_val_images=5)
    reach rank 0, which alone writes one W&B run."""
    import wandb

    from maskrcnn.training.pipeline import train

    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    cfg = compose(
        [
            *tiny,
            "trainer=ddp_sim",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=1",
            "logger=wandb",
            "log_val_images=5",
            "validate_after_train=false",
        ],
        output_dir=tmp_path,
        data_dir=shapes_dir,
    )
    train(cfg)
    wandb.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    run = read_offline_run(runs[0], wait_s=60)
    rows = _validation_rows(run)
    assert len(rows) == 1
    assert sorted(k for k in rows[0] if k.startswith("val/samples/")) == [f"val/samples/{i}" for i in range(1, 6)]
