"""Hostile inputs end to end: real ``train(cfg)`` runs on a COCO folder with broken files and annotations.

Every problem is either handled (the run completes, the log gives counts and the run directory
lists each skipped item) or rejected before the first training step with a message naming the
culprit.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra.errors import HydraException
from PIL import Image

from helpers.config import compose
from maskrcnn.errors import DatasetError
from maskrcnn.training.module import MaskRCNNModule
from maskrcnn.training.pipeline import train

SQUARE = [10, 10, 40, 10, 40, 40, 10, 40]  # a 30x30 square polygon


def _jpeg_bytes(size: tuple[int, int], mode: str = "RGB") -> bytes:
    """Noise for small images (a realistic file); a flat colour for big ones (fast to write)."""
    buf = io.BytesIO()
    if size[0] * size[1] <= 100_000:
        image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    else:
        image = Image.new("RGB", size, (120, 60, 30))
    image.convert(mode).save(buf, "JPEG", quality=90)
    return buf.getvalue()


class _Split:
    """Builds one split: copies of the shapes images plus added / broken entries."""

    def __init__(self, src: Path, dst: Path, keep: int) -> None:
        self.dst = dst
        dst.mkdir()
        coco = json.loads((src / "annotations.json").read_text())
        images = coco["images"][:keep]  # the first few, to keep the run short
        for img in images:
            shutil.copy(src / img["file_name"], dst / img["file_name"])
        ids = {img["id"] for img in images}
        annotations = [a for a in coco["annotations"] if a["image_id"] in ids]
        self.coco = {**coco, "images": images, "annotations": annotations}
        self.next_id = 1000

    def add(self, name: str, size: tuple[int, int], data: bytes | None, polygon: list | None = SQUARE, **ann) -> int:
        """Add image ``name`` (w, h) written with ``data`` (None: no file) and one annotation."""
        self.next_id += 1
        image_id = self.next_id
        if data is not None:
            (self.dst / name).write_bytes(data)
        self.coco["images"].append({"id": image_id, "file_name": name, "width": size[0], "height": size[1]})
        if polygon is not None:
            self.annotate(image_id, polygon, **ann)
        return image_id

    def annotate(self, image_id: int, polygon: list, **extra) -> int:
        self.next_id += 1
        xs, ys = polygon[0::2], polygon[1::2]
        bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        self.coco["annotations"].append(
            {
                "id": self.next_id,
                "image_id": image_id,
                "category_id": 1,
                "bbox": bbox,
                "segmentation": [polygon],
                "iscrowd": 0,
                "area": 100.0,
                **extra,
            }
        )
        return self.next_id

    def save(self, name: str = "annotations.json", **changes) -> Path:
        path = self.dst / name
        path.write_text(json.dumps({**self.coco, **changes}))
        return path


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def hostile(shapes_dir, tmp_path_factory):
    """``root`` of a data=folder dataset and what was broken in it (image ids / annotation ids)."""
    root = tmp_path_factory.mktemp("hostile")
    shapes = shapes_dir / "shapes"
    train, val = _Split(shapes / "train", root / "train", keep=4), _Split(shapes / "val", root / "val", keep=2)
    good = _jpeg_bytes((64, 48))
    gray16 = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (48, 1))
    ok = {
        "16bit": train.add("gray16.png", (64, 48), _png(gray16)),
        "cmyk": train.add("cmyk.jpg", (64, 48), _jpeg_bytes((64, 48), "CMYK")),
        "huge": train.add(
            "huge.jpg", (10000, 10000), _jpeg_bytes((10000, 10000), "L"), polygon=[0, 0, 5000, 0, 5000, 5000, 0, 5000]
        ),
    }
    found_by_check = {  # header check, before training
        train.add("corrupt.jpg", (64, 48), b"\xff\xd8 this is not a jpeg"): "cannot be read",
        train.add("zero.jpg", (64, 48), b""): "empty (0 bytes)",
        train.add("missing.jpg", (64, 48), None): "does not exist",
        train.add("wrong_size.jpg", (80, 48), good): "after EXIF orientation",
    }
    # Two portrait images (the only ones): grouped into one batch that ends up empty.
    truncated = _jpeg_bytes((48, 64))
    found_at_load = [train.add(f"trunc{i}.jpg", (48, 64), truncated[: len(truncated) // 2]) for i in (1, 2)]
    bad_anns = [
        train.annotate(1, [10, 10, float("nan"), 10, 40, 40]),  # NaN coordinate
        train.annotate(2, [-30, -30, -5, -30, -5, -5]),
    ]  # negative coordinates, all outside
    train.annotate(1, SQUARE, bbox=[10, 10, -30, 30])  # negative-size json box: the box comes from the mask, kept
    kept_ann = train.annotate(2, [-10, -10, 30, -10, 30, 30, -10, 30])  # partly negative: clipped, kept
    train.save()
    val_check = val.add("missing.jpg", (64, 48), None)
    val_load = val.add("trunc.jpg", (64, 48), good[: len(good) // 2])
    big_val = val.add(
        "big.jpg", (4000, 3000), _jpeg_bytes((4000, 3000)), polygon=[100, 100, 2000, 100, 2000, 1500, 100, 1500]
    )
    val.save()
    return {
        "root": root,
        "train": train,
        "val": val,
        "ok": ok,
        "check": found_by_check,
        "load": found_at_load,
        "bad_anns": bad_anns,
        "kept_ann": kept_ann,
        "val_check": val_check,
        "val_load": val_load,
        "big_val": big_val,
    }


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _cfg(tiny, hostile, tmp_path, *extra):
    # data=folder has no synthetic generator; tiny's model=resnet18_fpn_slim keeps small anchors.
    folder = [o for o in tiny if not o.startswith("data.generate_shapes")] + ["data=folder", "data.num_classes=3"]
    return compose([*folder, f"data.root={hostile['root']}", "validate_after_train=false", *extra], output_dir=tmp_path)


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if any training step runs."""

    def step(self, batch, batch_idx):
        raise AssertionError("training started")

    monkeypatch.setattr(MaskRCNNModule, "training_step", step)


def test_bad_files_and_annotations_are_skipped_listed_and_counted(tiny, hostile, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="maskrcnn"):
        # This training order (grouped by orientation, data seed 0) puts the two truncated images in one batch.
        order = ("data.aspect_ratio_grouping=true", "data.seed=0")
        cfg = _cfg(tiny, hostile, tmp_path, "data.num_workers=1", "data.persistent_workers=false", *order)
        metrics, objects = train(cfg)
    skipped_train = {e["image_id"]: e for e in _jsonl(tmp_path / "skipped_images_train.jsonl")}
    assert set(skipped_train) == set(hostile["check"]) | set(hostile["load"])
    for image_id, reason in hostile["check"].items():
        assert skipped_train[image_id]["stage"] == "check" and reason in skipped_train[image_id]["reason"]
    for image_id in hostile["load"]:  # passed the header check, failed to decode in a worker
        assert skipped_train[image_id]["stage"] == "load" and "truncated" in skipped_train[image_id]["reason"]
    skipped_val = {e["image_id"]: e["stage"] for e in _jsonl(tmp_path / "skipped_images_val.jsonl")}
    assert skipped_val == {hostile["val_check"]: "check", hostile["val_load"]: "load"}
    assert [e["annotation_id"] for e in _jsonl(tmp_path / "skipped_train.jsonl")] == hostile["bad_anns"]
    assert "train split: skipping 4 unreadable image(s)" in caplog.text
    assert "val split: skipping 1 unreadable image(s)" in caplog.text
    assert "train split: 6 unreadable image(s) skipped in total" in caplog.text
    assert "val split: 2 unreadable image(s) skipped in total" in caplog.text

    trainer, module, dm = objects["trainer"], objects["module"], objects["datamodule"]
    assert len(dm.train_dataset) == 4 + 3 + 2  # shapes + 16-bit / CMYK / huge + the two truncated
    # 5 batches; the all-truncated one is skipped (Lightning still counts it: a step without gradients).
    assert trainer.global_step == 5 and caplog.text.count("all its images were unreadable") == 1
    assert np.isfinite(metrics["train/loss"])
    # Validation evaluated exactly the readable images (2 shapes + the 4000x3000 one).
    assert sorted(module.evaluator.image_ids) == [1, 2, hostile["big_val"]]
    assert "val/segm_AP" in metrics
    # The 10000x10000 JPEG is decoded at 1/8 scale (DCT scaling) and trains at the configured size.
    index = {img["id"]: i for i, img in enumerate(dm.train_dataset.images)}
    assert dm.train_dataset._load_image(index[hostile["ok"]["huge"]]).shape == (1250, 1250, 3)
    image, target = dm.train_dataset[index[hostile["ok"]["huge"]]]
    assert image.shape == (3, 64, 64) and target["orig_size"] == (10000, 10000) and target["masks"].shape == (1, 64, 64)
    _, target = dm.train_dataset[index[2]]  # its partly-negative polygon was clipped, not dropped
    assert target["boxes"].min() >= 0 and len(target["boxes"]) == sum(
        a["image_id"] == 2 and a["id"] not in hostile["bad_anns"] for a in hostile["train"].coco["annotations"]
    )


def test_bad_images_raise_rejects_before_training_naming_files(tiny, hostile, tmp_path, no_training):
    with pytest.raises(DatasetError) as info:
        train(_cfg(tiny, hostile, tmp_path, "data.bad_images=raise", "data.check_images=full"))
    message = str(info.value)
    assert "6 unreadable image(s) in the train split" in message and "data.bad_images=skip" in message
    culprits = [*hostile["check"], *hostile["load"]]  # dataset order
    names = {img["id"]: img["file_name"] for img in hostile["train"].coco["images"]}
    for image_id in culprits[:5]:  # the first five are named, with image id and file
        assert f"image id {image_id} ('{names[image_id]}')" in message
    assert f"image id {culprits[5]} " not in message and "... and 1 more" in message


def test_duplicate_image_ids_are_rejected_naming_id_and_file(tiny, hostile, tmp_path, no_training):
    first, second, *rest = hostile["train"].coco["images"]
    dup = hostile["train"].save("dup.json", images=[first, {**second, "id": first["id"]}, *rest])
    name = second["file_name"].replace(".", r"\.")
    with pytest.raises(DatasetError, match=rf"dup\.json: duplicate image id {first['id']} \('{name}'\)"):
        train(_cfg(tiny, hostile, tmp_path, f"data.train.annotation_file={dup}"))


def test_empty_categories_are_rejected(tiny, hostile, tmp_path, no_training):
    empty = hostile["val"].save("nocats.json", categories=[], annotations=[])
    with pytest.raises(DatasetError, match=r"nocats\.json: 'categories' is empty"):
        train(_cfg(tiny, hostile, tmp_path, f"data.val.annotation_file={empty}"))


def test_val_annotation_without_bbox_is_rejected_before_training(tiny, hostile, tmp_path, no_training):
    anns = [dict(a) for a in hostile["val"].coco["annotations"]]
    del anns[1]["bbox"]
    path = hostile["val"].save("nobbox.json", annotations=anns)
    with pytest.raises(
        DatasetError, match=rf"nobbox\.json: annotation id {anns[1]['id']} .*COCO evaluation.*\['bbox'\]"
    ):
        train(_cfg(tiny, hostile, tmp_path, f"data.val.annotation_file={path}"))


def test_wrong_num_classes_is_rejected_naming_the_key(tiny, hostile, tmp_path, no_training):
    with pytest.raises(ValueError, match=r"data\.num_classes=7 .* have 3 categories"):
        train(_cfg(tiny, hostile, tmp_path, "data.num_classes=7"))


def test_bad_option_values_name_the_key(tiny, hostile, tmp_path):
    with pytest.raises(Exception, match=r"data\.bad_images='ignore'"):
        train(_cfg(tiny, hostile, tmp_path, "data.bad_images=ignore"))
    with pytest.raises(Exception, match=r"data\.check_images='fast'"):
        train(_cfg(tiny, hostile, tmp_path, "data.check_images=fast"))


def test_unknown_config_group_or_option_is_named(tiny, hostile, tmp_path):
    with pytest.raises(HydraException, match=r"(?s)model/resnet9_fpn.*Available options in 'model'.*resnet18_fpn"):
        _cfg(tiny, hostile, tmp_path, "model=resnet9_fpn")
    with pytest.raises(HydraException, match=r"modle"):
        _cfg(tiny, hostile, tmp_path, "modle=resnet18_fpn")


def test_a_validation_split_without_instances_warns_and_reports_nan_not_zero(tiny, shapes_dir, tmp_path, caplog):
    """COCO AP of a set without ground truth is not computable: it used to be logged as 0.000,
    which reads as "the model found nothing", and nothing said why."""
    val = json.loads((shapes_dir / "shapes" / "val" / "annotations.json").read_text())
    empty = tmp_path / "val_without_annotations.json"
    empty.write_text(json.dumps({**val, "annotations": []}))
    cfg = compose([*tiny, f"data.val.annotation_file={empty}"], output_dir=tmp_path / "run", data_dir=shapes_dir)
    with caplog.at_level(logging.INFO):
        metrics, _ = train(cfg)
    table = next(r.getMessage() for r in caplog.records if "APl" in r.getMessage())  # printed after training
    assert "nan" not in table and table.split("segm")[1].split()[:6] == ["-"] * 6
    warning = next(r.getMessage() for r in caplog.records if "no instance to evaluate" in r.getMessage())
    assert str(empty) in warning and "every val/ metric will be NaN" in warning
    assert "trainer.limit_val_batches=0" in warning
    assert np.isnan(metrics["val/segm_AP"]) and np.isnan(metrics["val/bbox_AR1"])
    assert metrics["train/loss"] > 0  # the run itself went on
