"""The image check (``data.check_images=header|full``) says what each unusable path is (a directory, a
symbolic link loop, a FIFO, a name too long, a truncated or undecodable file) and skips it; the header
check never decodes a whole image, and a decoder error there is a skip naming the file, never a crash."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers.config import TINY, compose
from maskrcnn.data.coco import CocoInstanceDataset
from maskrcnn.data.readers.image_io import TruncatedImageError, exif_size, open_image
from maskrcnn.training.pipeline import train

SQUARE = [10, 10, 40, 10, 40, 40, 10, 40]


def _encoded(fmt: str, size: tuple[int, int] = (64, 48), orientation: int | None = None) -> bytes:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _hostile_split(root: Path) -> tuple[Path, dict[str, str]]:
    """A folder + json with one good image and one image entry per kind of bad path; name -> expected reason."""
    root.mkdir(parents=True, exist_ok=True)
    png, jpeg = _encoded("PNG"), _encoded("JPEG")
    (root / "good.png").write_bytes(png)
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "cut_in_header.png").write_bytes(png[:40])
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("not an image")
    (root / "folder.jpg").mkdir()
    os.symlink("loop_b.jpg", root / "loop_a.jpg")
    os.symlink("loop_a.jpg", root / "loop_b.jpg")
    os.symlink("nowhere.jpg", root / "broken.jpg")
    os.mkfifo(root / "fifo.jpg")
    (root / "good.jpg").write_bytes(jpeg)
    long_name = "x" * 300 + ".jpg"
    expected = {
        "truncated.png": "truncated",
        "cut_in_header.png": "cannot be read",
        "empty.jpg": "is empty (0 bytes)",
        "text.jpg": "cannot be read as an image",
        "folder.jpg": "is a directory",
        "loop_a.jpg": "symbolic link loop",
        "broken.jpg": "is a broken symbolic link",
        "fifo.jpg": "is not a regular file (a FIFO)",
        long_name: "has a name too long",
        "missing.jpg": "does not exist",
    }
    names = ["good.png", "good.jpg", *expected]
    coco = {
        "images": [{"id": i + 1, "file_name": n, "width": 64, "height": 48} for i, n in enumerate(names)],
        "annotations": [
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 1,
                "segmentation": [SQUARE],
                "bbox": [10, 10, 30, 30],
                "area": 900.0,
                "iscrowd": 0,
            }
            for i in range(len(names))
        ],
        "categories": [{"id": 1, "name": "square"}],
    }
    (root / "annotations.json").write_text(json.dumps(coco))
    return root / "annotations.json", expected


@pytest.mark.parametrize("full_decode", [False, True])
def test_each_bad_path_is_named_for_what_it_is_and_skipped(tmp_path, full_decode, monkeypatch):
    annotations, expected = _hostile_split(tmp_path / "split")
    monkeypatch.setattr(Image.Image, "load", _no_decode(Image.Image.load, allow=full_decode))
    dataset = CocoInstanceDataset(tmp_path / "split", annotations, bad_images="skip")
    bad = {b["file_name"]: b["reason"] for b in dataset.check_images(full_decode=full_decode)}
    assert set(bad) == set(expected), bad
    for name, reason in expected.items():
        assert reason in bad[name] and repr(str(tmp_path / "split" / name)) in bad[name], (name, bad[name])


def _no_decode(load, allow: bool):
    def guarded(self):
        if not allow and self.format == "PNG":
            raise AssertionError("the header check decoded a PNG")
        return load(self)

    return guarded


def test_exif_orientation_of_png_and_jpeg_without_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(Image.Image, "load", _no_decode(Image.Image.load, allow=False))
    for fmt in ("PNG", "JPEG"):
        (tmp_path / f"r.{fmt}").write_bytes(_encoded(fmt, (64, 48), orientation=6))  # rotated by 90 degrees
        (tmp_path / f"u.{fmt}").write_bytes(_encoded(fmt, (64, 48)))
        with open_image(tmp_path / f"r.{fmt}") as img:
            assert exif_size(img) == (64, 48)
        with open_image(tmp_path / f"u.{fmt}") as img:
            assert exif_size(img) == (48, 64)


PNG = _encoded("PNG", (40, 30), orientation=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, len(PNG) - 13), full=st.booleans())  # 12 bytes: IEND, no pixel in it
def test_a_png_cut_anywhere_is_a_skip_naming_the_file(tmp_path, cut, full):
    root = tmp_path / f"cut{cut}{full}"
    root.mkdir(exist_ok=True)
    (root / "a.png").write_bytes(PNG[:cut])
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 30, "height": 40}],
        "annotations": [],
        "categories": [{"id": 1, "name": "s"}],
    }
    (root / "a.json").write_text(json.dumps(coco))
    bad = CocoInstanceDataset(root, root / "a.json", bad_images="skip").check_images(full_decode=full)
    assert len(bad) == 1 and repr(str(root / "a.png")) in bad[0]["reason"], bad


def test_truncated_png_chunk_walk_says_where_it_ends(tmp_path):
    (tmp_path / "t.png").write_bytes(PNG[: len(PNG) - 20])
    with open_image(tmp_path / "t.png") as img, pytest.raises(TruncatedImageError, match="ends"):
        exif_size(img)


@pytest.mark.slow  # a real training run (about 15 s of CPU)
def test_a_run_with_every_bad_path_in_the_training_split_trains_and_lists_them(tmp_path, shapes_dir):
    annotations, expected = _hostile_split(tmp_path / "train")
    val = shapes_dir / "shapes" / "val"
    cfg = compose(
        [
            *TINY,
            "data.num_classes=1",
            f"data.train.image_dir={tmp_path / 'train'}",
            f"data.train.annotation_file={annotations}",
            f"data.val.image_dir={tmp_path / 'train'}",
            f"data.val.annotation_file={annotations}",
            "data.generate_shapes=null",
            "trainer.max_steps=1",
            "validate_after_train=false",
            "dataset_report=false",
            "trainer.limit_val_batches=1",
        ],
        output_dir=tmp_path / "run",
    )
    assert val.is_dir()
    train(cfg)
    listed = [json.loads(line) for line in (tmp_path / "run" / "skipped_images_train.jsonl").read_text().splitlines()]
    assert {r["file_name"] for r in listed} == set(expected)
