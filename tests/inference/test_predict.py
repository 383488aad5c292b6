"""predict: a checkpoint on a folder of images → PNG overlays + COCO results JSON (RLE)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from helpers.config import ROOT, compose
from helpers.random_checkpoint import save_random_checkpoint
from maskrcnn.errors import DatasetError
from maskrcnn.inference.inputs import list_inputs, load_for_model
from maskrcnn.inference.predict_images import load_checkpoint_model, predict


@pytest.fixture(scope="module")
def checkpoint(shapes_dir, tmp_path_factory):
    """A tiny random-init model that finds something everywhere (score_thresh=0)."""
    return save_random_checkpoint(
        tmp_path_factory.mktemp("run") / "random.ckpt", ["model.roi_heads.score_thresh=0.0"], data_dir=shapes_dir
    )


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
    cfg = compose(
        [f"ckpt_path={checkpoint}", f"input={images}", f"output={out}", "score_thresh=0.0", "device=cpu"],
        config_name="predict",
        output_dir=tmp_path,
    )
    predict(cfg)
    files = list_inputs(str(images)).files
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
    for b, s in zip(batched, single, strict=True):
        assert torch.allclose(b["boxes"], s["boxes"], atol=1e-3)
        assert torch.allclose(b["scores"], s["scores"], atol=1e-4)


def test_predict_errors_name_the_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        list_inputs(str(tmp_path / "nothing_here" / "*.jpg"))
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_checkpoint_model(tmp_path / "missing.ckpt")


def test_predict_cli(checkpoint, images, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [
            sys.executable,
            "src/predict.py",
            f"ckpt_path={checkpoint}",
            f"input={images}/*.png",
            f"output={out}",
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list(out.glob("*.png"))) == 2 and (out / "predictions.json").is_file()


def _jpeg(path, size, quality=90):
    """A smooth colour gradient (compresses well, so big files stay small)."""
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    rgb = np.concatenate(
        [np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)), np.broadcast_to((x + y) / 2, (h, w, 1))], axis=2
    ).astype(np.uint8)
    Image.fromarray(rgb).save(path, quality=quality)
    return path


def _predict(checkpoint, folder, out, *extra):
    cfg = compose(
        [f"ckpt_path={checkpoint}", f"input={folder}", f"output={out}", "score_thresh=0.0", "device=cpu", *extra],
        config_name="predict",
        output_dir=out.parent,
    )
    return predict(cfg)


def test_unreadable_inputs_are_skipped_listed_and_the_rest_written(checkpoint, images, tmp_path):
    (images / "zz_corrupt.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    truncated = _jpeg(tmp_path / "t.jpg", (64, 48)).read_bytes()
    (images / "zz_truncated.jpg").write_bytes(truncated[: len(truncated) // 2])
    (images / "zz_empty.png").write_bytes(b"")
    (images / "notes.txt").write_text("not an image, ignored by suffix")
    out = tmp_path / "out"
    _predict(checkpoint, images, out)
    meta = json.loads((out / "images.json").read_text())
    assert [Path(m["file_name"]).name for m in meta] == ["000000.png", "000001.png", "rotated.jpg"]
    results = json.loads((out / "predictions.json").read_text())
    assert {r["image_id"] for r in results} == {1, 2, 3}
    skipped = [json.loads(line) for line in (out / "skipped_inputs.jsonl").read_text().splitlines()]
    reasons = {Path(e["file"]).name: e["reason"] for e in skipped}
    assert set(reasons) == {"zz_corrupt.jpg", "zz_truncated.jpg", "zz_empty.png"}
    assert "cannot be read as an image" in reasons["zz_corrupt.jpg"]
    assert "truncated" in reasons["zz_truncated.jpg"] and "empty (0 bytes)" in reasons["zz_empty.png"]
    assert sorted(p.name for p in out.glob("*.png")) == ["000000.png", "000001.png", "rotated.png"]


def test_strict_stops_at_the_first_unreadable_input_keeping_earlier_results(checkpoint, images, tmp_path):
    (images / "b_bad.jpg").write_bytes(b"garbage")  # sorted after the two PNGs, before rotated.jpg
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=r"b_bad\.jpg.*strict=true"):
        _predict(checkpoint, images, out, "strict=true", "batch_size=3")
    meta = json.loads((out / "images.json").read_text())
    assert [Path(m["file_name"]).name for m in meta] == ["000000.png", "000001.png"]
    assert json.loads((out / "predictions.json").read_text())


def test_a_crash_late_keeps_the_results_so_far(checkpoint, images, tmp_path, monkeypatch):
    import maskrcnn.inference.predict_images as module

    real, calls = module._predict_batch, []

    def crash_on_second(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash (out of memory, ...)")
        real(*args)

    monkeypatch.setattr(module, "_predict_batch", crash_on_second)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _predict(checkpoint, images, out, "batch_size=2")
    assert len(json.loads((out / "images.json").read_text())) == 2
    assert {r["image_id"] for r in json.loads((out / "predictions.json").read_text())} == {1, 2}


def test_large_photos_are_decoded_small_and_results_are_at_full_size(checkpoint, tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    _jpeg(folder / "photo.jpg", (3000, 2000))
    Image.open(_jpeg(tmp_path / "tmp.jpg", (1600, 1200))).save(folder / "scan.png")
    # The tiny model's input is 64 px: the JPEG is DCT-decoded at 1/8, then shrunk x5 still as uint8.
    image, original = load_for_model(folder / "photo.jpg", 64, 64)
    assert original == (2000, 3000) and image.shape == (50, 75, 3)
    image, original = load_for_model(folder / "scan.png", 64, 64)
    assert original == (1200, 1600) and image.shape == (48, 64, 3)  # not a JPEG: decoded, then shrunk x25
    out = tmp_path / "out"
    _predict(checkpoint, folder, out)
    meta = {m["id"]: m for m in json.loads((out / "images.json").read_text())}
    assert sorted((m["height"], m["width"]) for m in meta.values()) == [(1200, 1600), (2000, 3000)]
    results = json.loads((out / "predictions.json").read_text())
    assert len({r["image_id"] for r in results}) == 2
    for r in results:  # boxes and masks at the original resolution
        height, width = meta[r["image_id"]]["height"], meta[r["image_id"]]["width"]
        assert r["segmentation"]["size"] == [height, width]
        x, y, w, h = r["bbox"]
        assert -1e-3 <= x and x + w <= width + 1e-3 and -1e-3 <= y and y + h <= height + 1e-3
        box_of_mask = mask_utils.toBbox(r["segmentation"])
        if mask_utils.area(r["segmentation"]) > 0:  # the mask lies in its (expanded) box
            assert box_of_mask[0] >= x - w and box_of_mask[0] + box_of_mask[2] <= x + 2 * w
    assert Image.open(out / "photo.png").size == (75, 50)  # overlays at the decoded size


def test_predict_results_equal_the_network_output(checkpoint, images, tmp_path):
    """Images no larger than the model input go through predict's own pasting unchanged."""
    import torch

    from maskrcnn.data.readers.image_io import image_to_tensor, load_rgb

    out = tmp_path / "out"
    _predict(checkpoint, images, out)
    results = json.loads((out / "predictions.json").read_text())
    net, _ = load_checkpoint_model(checkpoint, mask_format="rle")
    path = sorted(images.glob("*.png"))[0]
    with torch.no_grad():
        det = net([image_to_tensor(load_rgb(path))])["detections"][0]
    rows = [r for r in results if r["image_id"] == 1]
    assert len(rows) == len(det["scores"]) > 0
    for row, box, score, rle in zip(rows, det["boxes"].tolist(), det["scores"].tolist(), det["masks"], strict=True):
        assert row["score"] == pytest.approx(score, abs=1e-6)
        assert row["bbox"] == pytest.approx([box[0], box[1], box[2] - box[0], box[3] - box[1]], abs=1e-4)
        assert row["segmentation"] == rle


@pytest.mark.parametrize("aligned", [False, True])
def test_box_cropped_rle_pasting_equals_full_image_pasting(aligned):
    """mask_format="rle" pastes each mask over its box only; the RLEs equal those of the full-image
    paste, in both geometries, also for boxes reaching outside the image or lying entirely outside it."""
    import torch

    from maskrcnn.modeling.postprocess import masks_to_rle, paste_masks

    g = torch.Generator().manual_seed(0)
    for height, width, n in [(37, 53, 60), (200, 120, 60), (5, 5, 10)]:
        masks = torch.rand(n, 1, 28, 28, generator=g)  # some all below 0.5 after pasting: empty RLEs
        size = torch.tensor([width, height])
        xy = torch.rand(n, 2, generator=g) * size * 1.4 - size * 0.2
        boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * size * 0.6 + 0.3], dim=1)
        expected = masks_to_rle(paste_masks(masks, boxes, (height, width), aligned=aligned))
        assert paste_masks(masks, boxes, (height, width), mask_format="rle", aligned=aligned) == expected


def test_predict_with_the_fast_inference_copy_gives_eager_results(checkpoint, images, tmp_path, monkeypatch):
    """inference=fast end to end (folded BN, channels_last, threaded RoIAlign, oneDNN linear):
    the same detections as eager predict, up to float32 reordering."""
    import torch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the RoIAlign split also runs on 1 core
    _predict(checkpoint, images, tmp_path / "eager")
    _predict(checkpoint, images, tmp_path / "fast", "inference=fast")
    eager = json.loads((tmp_path / "eager" / "predictions.json").read_text())
    fast = json.loads((tmp_path / "fast" / "predictions.json").read_text())
    assert len(fast) == len(eager) > 0
    for f, e in zip(fast, eager, strict=True):
        assert (f["image_id"], f["category_id"]) == (e["image_id"], e["category_id"])
        assert f["score"] == pytest.approx(e["score"], abs=1e-4)
        assert f["bbox"] == pytest.approx(e["bbox"], abs=1e-3)
