"""``inference.slice`` in predict and eval, end to end on a tiny random checkpoint; bad values are one
ConfigError line naming the key, before the model loads."""

from __future__ import annotations

import json

import pytest
from pycocotools import mask as mask_utils

from helpers.config import compose
from helpers.random_checkpoint import save_random_checkpoint
from helpers.scripts import run_entry_point
from maskrcnn.errors import ConfigError
from maskrcnn.inference.predict_images import predict
from maskrcnn.training.pipeline import evaluate


@pytest.fixture(scope="module")
def checkpoint(shapes_dir, tmp_path_factory):
    """A tiny random-init model (64 px: the 64 px shapes images enter it at scale 1) that finds
    something everywhere (score_thresh=0)."""
    return save_random_checkpoint(
        tmp_path_factory.mktemp("run") / "random.ckpt", ["model.roi_heads.score_thresh=0.0"], data_dir=shapes_dir
    )


def _predict(checkpoint, images, out, *extra):
    cfg = compose(
        [f"ckpt_path={checkpoint}", f"input={images}", f"output={out}", "score_thresh=0.0", "device=cpu", *extra],
        config_name="predict",
        output_dir=out.parent,
    )
    predict(cfg)
    return json.loads((out / "predictions.json").read_text()), json.loads((out / "images.json").read_text())


def test_predict_with_tiles_writes_full_resolution_results(checkpoint, shapes_dir, tmp_path):
    images = shapes_dir / "shapes" / "val"
    # 64 px images in tiles of 32 with a quarter overlap: 3 x 3 tiles (starts 0, 24, 32) + the full image
    results, meta = _predict(checkpoint, images, tmp_path / "sliced", "inference.slice.tile_size=32")
    assert len(meta) == 5 and results
    assert {r["image_id"] for r in results} <= {m["id"] for m in meta}
    for r in results:
        assert r["segmentation"]["size"] == [64, 64]
        x, y, w, h = r["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 64 + 1e-3 and y + h <= 64 + 1e-3
        assert mask_utils.decode(r["segmentation"]).shape == (64, 64)
    assert len(list((tmp_path / "sliced").glob("*.png"))) == 5  # overlays


def test_predict_with_tiles_runs_the_fast_inference_copy(checkpoint, shapes_dir, tmp_path):
    images = shapes_dir / "shapes" / "val"
    results, meta = _predict(checkpoint, images, tmp_path / "fast", "inference=fast", "inference.slice.tile_size=32")
    assert len(meta) == 5 and results and all(r["segmentation"]["size"] == [64, 64] for r in results)


def test_predict_with_one_tile_per_image_equals_plain_predict(checkpoint, shapes_dir, tmp_path):
    images = shapes_dir / "shapes" / "val"
    # one image per forward pass in both (a batch of two may differ in the last float32 bit)
    plain, _ = _predict(checkpoint, images, tmp_path / "plain", "batch_size=1")
    sliced, _ = _predict(checkpoint, images, tmp_path / "one_tile", "inference.slice.tile_size=64")
    assert sliced == plain


def test_eval_with_slicing(checkpoint, shapes_dir, tmp_path):
    def run(*extra):
        overrides = [f"ckpt_path={checkpoint}", "data.num_workers=0", *extra]
        cfg = compose(overrides, config_name="eval", output_dir=tmp_path / "eval", data_dir=shapes_dir)
        return evaluate(cfg, overrides=overrides)

    plain = run()
    one_tile = run("inference.slice.tile_size=64")  # each 64 px image is one tile: plain inference
    tiled = run("inference.slice.tile_size=32")
    assert "val/loss" in plain and "val/loss" not in one_tile  # sliced: detections only
    for key in ("val/bbox_AP", "val/segm_AP", "val/segm_AP50"):
        assert one_tile[key] == plain[key], key
    assert set(tiled) >= {"val/bbox_AP", "val/segm_AP"}


@pytest.mark.parametrize(
    "override,message",
    [
        ("inference.slice.tile_size=8", "inference.slice.tile_size=8 must be null (off) or a whole number"),
        ("inference.slice.overlap=1.5", "inference.slice.overlap=1.5 must be a fraction of the tile in [0, 0.9]"),
        ("inference.slice.merge_iou=0", "inference.slice.merge_iou=0 must be a number in (0, 1]"),
        ("+inference.slice.tile=512", "inference.slice.tile is not an option"),
    ],
)
def test_bad_slice_values_stop_predict_before_the_model_loads(override, message, tmp_path):
    cfg = compose(
        ["ckpt_path=/nonexistent.ckpt", f"input={tmp_path}", f"output={tmp_path / 'out'}", override],
        config_name="predict",
        output_dir=tmp_path,
    )
    with pytest.raises(ConfigError) as info:
        predict(cfg)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_the_predict_command_prints_one_line(tmp_path):
    proc = run_entry_point(
        "src/predict.py",
        "ckpt_path=x.ckpt",
        f"input={tmp_path}",
        "inference.slice.overlap=2",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in output, output[-2000:]
    lines = [line for line in output.splitlines() if "Error" in line]
    assert len(lines) == 1 and "inference.slice.overlap=2 must be" in lines[0], output[-2000:]
