"""``tta=...`` end to end: eval and predict on a tiny random checkpoint report the merged views'
results and print the cost line; bad ``tta`` values stop both with one ConfigError naming the key."""

from __future__ import annotations

import json
import logging
import math

import pytest
from omegaconf import OmegaConf, open_dict

from helpers.config import compose
from helpers.random_checkpoint import save_random_checkpoint
from helpers.scripts import run_entry_point
from maskrcnn.errors import ConfigError
from maskrcnn.inference.predict_images import predict
from maskrcnn.inference.tta import TestTimeAugmentation
from maskrcnn.inference.tta_options import check_tta_config
from maskrcnn.training.config_types import check_config_types
from maskrcnn.training.pipeline import evaluate


@pytest.fixture(scope="module")
def checkpoint(shapes_dir, tmp_path_factory):
    """A tiny random-init model that finds something everywhere (score_thresh=0)."""
    return save_random_checkpoint(
        tmp_path_factory.mktemp("run") / "random.ckpt", ["model.roi_heads.score_thresh=0.0"], data_dir=shapes_dir
    )


def test_eval_with_tta_scores_the_merged_views_and_prints_the_cost(checkpoint, tmp_path, caplog, monkeypatch):
    formats: list[str | None] = []
    call = TestTimeAugmentation.__call__

    def spy(self, images, mask_format=None):
        formats.append(mask_format)
        return call(self, images, mask_format=mask_format)

    monkeypatch.setattr(TestTimeAugmentation, "__call__", spy)
    overrides = [f"ckpt_path={checkpoint}", "data.num_workers=0", "tta=flip"]
    cfg = compose(overrides, config_name="eval", output_dir=tmp_path / "eval", data_dir=tmp_path / "nothing")
    with caplog.at_level(logging.INFO):
        metrics = evaluate(cfg, overrides=overrides)
    assert formats and set(formats) == {"rle"}  # as without TTA: masks pasted one at a time
    assert all(math.isnan(metrics[k]) or 0.0 <= metrics[k] <= 1.0 for k in ("val/bbox_AP", "val/segm_AP"))
    assert "val/loss" not in metrics  # loss terms belong to the network's single view
    lines = [line for line in caplog.text.splitlines() if "TTA: " in line]
    assert len(lines) == 1 and "TTA: 2 views per image (64 px, 64 px flipped), " in lines[0], caplog.text[-2000:]
    assert lines[0].endswith("x the time without TTA (5 images)")


def test_predict_with_tta_writes_the_merged_detections_and_prints_the_cost(checkpoint, shapes_dir, tmp_path, caplog):
    out = tmp_path / "out"
    images = sorted((shapes_dir / "shapes" / "val").glob("*.png"))[:2]
    folder = tmp_path / "in"
    folder.mkdir()
    for src in images:
        (folder / src.name).write_bytes(src.read_bytes())
    cfg = compose(
        [f"ckpt_path={checkpoint}", f"input={folder}", f"output={out}", "score_thresh=0.0", "device=cpu"]
        + ["tta=flip_scales"],
        config_name="predict",
        output_dir=tmp_path,
    )
    with caplog.at_level(logging.INFO):
        predict(cfg)
    results = json.loads((out / "predictions.json").read_text())
    assert {r["image_id"] for r in results} == {1, 2}
    assert len([r for r in results if r["image_id"] == 1]) <= 20  # the model's detections_per_img
    assert "TTA: 6 views per image (51 px, 51 px flipped, 64 px, 64 px flipped, 77 px, 77 px flipped), " in caplog.text


def test_predict_cli_with_tta_prints_one_cost_line(checkpoint, shapes_dir, tmp_path):
    image = sorted((shapes_dir / "shapes" / "val").glob("*.png"))[0]
    proc = run_entry_point(
        "src/predict.py",
        f"ckpt_path={checkpoint}",
        f"input={image}",
        f"output={tmp_path / 'out'}",
        "tta=flip",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    lines = [line for line in output.splitlines() if "TTA: " in line]
    assert len(lines) == 1 and lines[0].endswith("x the time without TTA (1 image)"), output[-3000:]


BAD_TTA = [  # (override, the message)
    ("tta.flip=maybe", "tta.flip='maybe' must be true or false"),
    ("tta.scales=[]", "tta.scales=[] must be a non-empty list of values each a finite number > 0, <= 4"),
    ("tta.scales=[1.0,0]", "tta.scales=[1.0, 0] must be a non-empty list of values each a finite number > 0, <= 4"),
    ("tta.scales=[5]", "tta.scales=[5] must be a non-empty list of values each a finite number > 0, <= 4"),
    ("tta.scales=1.0", "tta.scales=1.0 must be a non-empty list of values each a finite number > 0, <= 4"),
    (
        "tta.min_sizes=[800,0]",
        "tta.min_sizes=[800, 0] must be null, or a non-empty list of values each a positive integer (at most 16384 "
        "pixels)",
    ),
    ("tta.max_size=-1", "tta.max_size=-1 must be null, or a positive integer (at most 16384 pixels)"),
    ("tta.max_size=big", "tta.max_size='big' must be null, or a positive integer (at most 16384 pixels)"),
]


@pytest.mark.parametrize("override,message", BAD_TTA)
def test_a_bad_tta_value_is_one_config_error_naming_the_key_in_eval_and_predict(override, message, tmp_path):
    """Eval checks ``tta`` in config_types, predict in tta_options, before any model is loaded:
    both say the same one line."""
    missing = tmp_path / "missing.ckpt"  # would fail later, when loaded
    evaluated = compose([f"ckpt_path={missing}", override], config_name="eval", output_dir=tmp_path)
    with pytest.raises(ConfigError) as from_types:
        check_config_types(evaluated)
    with pytest.raises(ConfigError) as from_tta:
        check_tta_config(evaluated.tta)
    predicted = compose(
        [f"ckpt_path={missing}", f"input={tmp_path}", override], config_name="predict", output_dir=tmp_path
    )
    with pytest.raises(ConfigError) as from_predict:
        predict(predicted)
    assert str(from_types.value) == str(from_tta.value) == str(from_predict.value) == message


def test_eval_checks_tta_before_anything_is_built(checkpoint, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("built something before the tta config was checked")

    monkeypatch.setattr("maskrcnn.training.pipeline.build_datamodule", never)
    overrides = [f"ckpt_path={checkpoint}", "tta=flip"]
    cfg = compose(overrides, config_name="eval", output_dir=tmp_path)
    with open_dict(cfg):
        OmegaConf.update(cfg, "tta.scales", [0.0], merge=False)
    with pytest.raises(ConfigError, match=r"^tta\.scales=\[0\.0\] must be"):
        evaluate(cfg, overrides=overrides)


def test_tta_with_sliced_inference_is_one_config_error_in_eval_and_predict(checkpoint, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("built something before tta and inference.slice were checked")

    monkeypatch.setattr("maskrcnn.training.pipeline.build_datamodule", never)
    both = ["tta=flip", "inference.slice.tile_size=64"]
    message = r"^tta=\.\.\. and inference\.slice\.tile_size=\.\.\. cannot be combined"
    with pytest.raises(ConfigError, match=message):
        evaluate(compose([f"ckpt_path={checkpoint}", *both], config_name="eval", output_dir=tmp_path), overrides=both)
    predicted = compose(
        [f"ckpt_path={checkpoint}", f"input={tmp_path}", *both], config_name="predict", output_dir=tmp_path
    )
    with pytest.raises(ConfigError, match=message):
        predict(predicted)
