"""predict: a checkpoint on a folder of images → PNG overlays + COCO results JSON (RLE)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools import mask as mask_utils

from conftest import ROOT, TINY, compose
from maskrcnn.predict import list_images, load_checkpoint_model, predict
from maskrcnn.training.pipeline import train


@pytest.fixture(scope="module")
def checkpoint(shapes_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = compose(
        [*TINY, "trainer.max_steps=2", "callbacks=default", "callbacks.rich_progress_bar=null",
         "callbacks.model_checkpoint.monitor=null", "trainer.limit_val_batches=0", "validate_after_train=false",
         "model.roi_heads.score_thresh=0.0"],
        output_dir=out, data_dir=shapes_dir,
    )
    train(cfg)
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture
def images(shapes_dir, tmp_path):
    """Two PNGs from the val split, one large JPEG carrying an EXIF 'rotate 90' tag."""
    folder = tmp_path / "in"
    folder.mkdir()
    for src in sorted((shapes_dir / "shapes" / "val").glob("*.png"))[:2]:
        (folder / src.name).write_bytes(src.read_bytes())
    rotated = Image.fromarray(np.full((60, 100, 3), 120, np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW when displayed
    rotated.save(folder / "rotated.jpg", exif=exif)
    return folder


def test_predict_writes_overlays_and_loadable_coco_results(checkpoint, images, tmp_path):
    out = tmp_path / "out"
    cfg = compose([f"ckpt_path={checkpoint}", f"input={images}", f"output={out}", "score_thresh=0.0", "device=cpu"],
                  config_name="predict", output_dir=tmp_path)
    predict(cfg)
    files = list_images(str(images))
    for f in files:
        overlay = Image.open(out / f"{f.stem}.png")
        original = Image.open(f)
        assert overlay.mode == "RGB"
        # EXIF-rotated input is drawn upright: width and height swap.
        expected = original.size[::-1] if f.name == "rotated.jpg" else original.size
        assert overlay.size == expected
    meta = json.loads((out / "images.json").read_text())
    results = json.loads((out / "predictions.json").read_text())
    assert [m["file_name"] for m in meta] == [str(f) for f in files]
    assert results, "a score_thresh=0 model must produce detections"
    gt = COCO()
    gt.dataset = {"images": meta, "annotations": [], "categories": [{"id": i, "name": str(i)} for i in (1, 2, 3)]}
    gt.createIndex()
    dt = gt.loadRes(results)
    assert len(dt.getAnnIds()) == len(results)
    for r in results[:5]:
        h, w = r["segmentation"]["size"]
        info = next(m for m in meta if m["id"] == r["image_id"])
        assert (h, w) == (info["height"], info["width"])
        assert mask_utils.decode(r["segmentation"]).shape == (h, w)
        assert r["category_id"] in (1, 2, 3)


def test_predict_batches_match_single_images(checkpoint, shapes_dir):
    import torch

    net, meta = load_checkpoint_model(checkpoint, mask_format="prob")
    assert meta["class_names"][1:] == ["square", "circle", "triangle"]
    files = sorted((shapes_dir / "shapes" / "val").glob("*.png"))[:2]
    tensors = [torch.from_numpy(np.asarray(Image.open(f).convert("RGB"))).permute(2, 0, 1).float() / 255 for f in files]
    with torch.no_grad():
        batched = net(tensors)["detections"]
        single = [net([t])["detections"][0] for t in tensors]
    for b, s in zip(batched, single):
        assert torch.allclose(b["boxes"], s["boxes"], atol=1e-3)
        assert torch.allclose(b["scores"], s["scores"], atol=1e-4)


def test_predict_errors_name_the_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        list_images(str(tmp_path / "nothing_here" / "*.jpg"))
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_checkpoint_model(tmp_path / "missing.ckpt")


def test_predict_cli(checkpoint, images, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "src/predict.py", f"ckpt_path={checkpoint}", f"input={images}/*.png", f"output={out}",
         f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list(out.glob("*.png"))) == 2 and (out / "predictions.json").is_file()
