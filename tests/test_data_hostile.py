"""Broken / unusual COCO inputs: each must raise a precise error, be skipped and logged, or load correctly."""

import io
import json
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from maskrcnn.data.coco import CocoInstanceDataset
from maskrcnn.data.errors import DatasetError
from maskrcnn.data.transforms import build_transforms

SQUARE = [[2, 2, 12, 2, 12, 10, 2, 10]]  # rows 2..9, cols 2..11 -> box [2, 2, 12, 10]


def make(tmp_path, images=None, annotations=None, categories=None, write_images=True, **kwargs):
    """Write a COCO file (default: one 20x16 image with one square) and build the dataset."""
    images = images if images is not None else [{"id": 1, "file_name": "a.png", "width": 20, "height": 16}]
    if annotations is None:
        annotations = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": SQUARE, "iscrowd": 0}]
    categories = categories if categories is not None else [{"id": 1, "name": "thing"}]
    if write_images:
        for img in images:
            if not (tmp_path / img["file_name"]).exists():
                Image.new("RGB", (img["width"], img["height"]), (10, 20, 30)).save(tmp_path / img["file_name"])
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return CocoInstanceDataset(tmp_path, ann_file, **kwargs)


def ann(id_, segmentation, image_id=1, category_id=1, **extra):
    return {"id": id_, "image_id": image_id, "category_id": category_id, "segmentation": segmentation, "iscrowd": 0, **extra}


# ---------------------------------------------------------------- structural errors raise
def test_unknown_image_id(tmp_path):
    with pytest.raises(DatasetError, match=r"ann\.json.*annotation id 7 refers to unknown image id 99"):
        make(tmp_path, annotations=[ann(7, SQUARE, image_id=99)])


def test_unknown_category(tmp_path):
    with pytest.raises(DatasetError, match=r"ann\.json.*annotation id 3 \(image id 1\).*unknown category id 5"):
        make(tmp_path, annotations=[ann(3, SQUARE, category_id=5)])


def test_duplicate_image_ids(tmp_path):
    imgs = [{"id": 4, "file_name": "a.png", "width": 20, "height": 16}, {"id": 4, "file_name": "b.png", "width": 20, "height": 16}]
    with pytest.raises(DatasetError, match=r"ann\.json.*duplicate image id 4 \('b\.png'\)"):
        make(tmp_path, images=imgs, annotations=[])


def test_duplicate_annotation_ids(tmp_path):
    with pytest.raises(DatasetError, match=r"ann\.json.*duplicate annotation id 2"):
        make(tmp_path, annotations=[ann(2, SQUARE), ann(2, SQUARE)])


def test_empty_categories_and_unreadable_json(tmp_path):
    with pytest.raises(DatasetError, match=r"ann\.json.*'categories' is empty"):
        make(tmp_path, categories=[])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"bad\.json"):
        CocoInstanceDataset(tmp_path, tmp_path / "bad.json")
    assert issubclass(DatasetError, ValueError)


# ---------------------------------------------------------------- geometry problems are skipped + logged
def test_bad_geometry_is_skipped_and_logged(tmp_path, caplog):
    bad = [
        ann(10, [[1, 1, 5, 5]]),  # 2 points
        ann(11, [[1, 1, float("nan"), 5, 8, 8]]),  # NaN coordinate
        ann(12, SQUARE, bbox=[2, 2, -5, 8]),  # negative-size bbox
        ann(13, [[30, 30, 40, 30, 40, 40]], bbox=[30, 30, 10, 10]),  # entirely outside the 20x16 image
        ann(14, [[1, 1, 5, 5, 9, 9]]),  # collinear -> zero area
        ann(15, SQUARE, bbox=[math.inf, 2, 3, 3]),
    ]
    good = [ann(1, SQUARE), ann(2, [[-5, -5, 6, -5, 6, 6, -5, 6]])]  # negative coords are clipped, not dropped
    log = tmp_path / "run" / "skipped.jsonl"
    with caplog.at_level(logging.WARNING, logger="maskrcnn.data.coco"):
        ds = make(tmp_path, annotations=good + bad, skipped_log=log)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["annotation_id"] for e in entries] == [10, 11, 12, 13, 14, 15]
    assert all(e["image_id"] == 1 and e["file_name"] == "a.png" and e["annotation_file"].endswith("ann.json") for e in entries)
    reasons = [e["reason"] for e in entries]
    assert "fewer than 3 points" in reasons[0] and "NaN" in reasons[1] and "negative width" in reasons[2]
    assert "outside" in reasons[3] and "zero area" in reasons[4] and "finite" in reasons[5]
    assert "skipped 6 item(s)" in caplog.text and str(log) in caplog.text
    _, target = ds[0]
    assert target["labels"].tolist() == [1, 1]
    assert target["boxes"].tolist() == [[2, 2, 12, 10], [0, 0, 6, 6]]


def test_keep_empty_false_excludes_and_logs(tmp_path):
    imgs = [{"id": 1, "file_name": "a.png", "width": 20, "height": 16}, {"id": 2, "file_name": "b.png", "width": 20, "height": 16}]
    assert len(make(tmp_path, images=imgs)) == 2
    ds = make(tmp_path, images=imgs, keep_empty=False)
    assert len(ds) == 1 and ds.skipped[0]["image_id"] == 2 and "keep_empty" in ds.skipped[0]["reason"]
    _, target = make(tmp_path, images=imgs)[1]  # an empty image gives well-formed empty tensors
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,) and target["masks"].shape == (0, 16, 20)


# ---------------------------------------------------------------- bad image files
def test_missing_zero_byte_corrupt_and_truncated_files(tmp_path):
    imgs = [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48} for i in (1, 2, 3, 4, 5)]
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "1.jpg").write_bytes(buf.getvalue())  # good
    (tmp_path / "3.jpg").write_bytes(b"")  # zero bytes
    (tmp_path / "4.jpg").write_bytes(b"this is not an image at all")  # corrupt
    (tmp_path / "5.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # truncated
    ds = make(tmp_path, images=imgs, annotations=[], write_images=False)
    assert ds[0][0].shape == (3, 48, 64)
    for index, pattern in [(1, "2.jpg'.*image id 2.*does not exist"), (2, "3.jpg'.*image id 3.*empty"),
                           (3, "4.jpg'.*image id 4.*cannot be read"), (4, "5.jpg'.*image id 5.*truncated")]:
        with pytest.raises(DatasetError, match=pattern):
            ds[index]
    assert [b["image_id"] for b in ds.check_images()] == [2, 3, 4]  # header check cannot see truncation
    assert [b["image_id"] for b in ds.check_images(full_decode=True)] == [2, 3, 4, 5]


def test_size_mismatch_is_reported(tmp_path):
    Image.new("RGB", (30, 30)).save(tmp_path / "a.png")
    ds = make(tmp_path, write_images=False)
    with pytest.raises(DatasetError, match=r"a\.png'.*image id 1.*30x30.*says 20x16"):
        ds[0]
    assert len(ds.check_images()) == 1


# ---------------------------------------------------------------- unusual but valid images
def _load_single(tmp_path, pil_image, name="a.png", **save_kwargs):
    pil_image.save(tmp_path / name, **save_kwargs)
    w, h = pil_image.size
    ds = make(tmp_path, images=[{"id": 1, "file_name": name, "width": w, "height": h}], annotations=[], write_images=False)
    image, _ = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, h, w)
    return (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    gray16 = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (8, 1))
    out = _load_single(tmp_path, Image.fromarray(gray16))
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, -1].tolist() == [255, 255, 255]
    np.testing.assert_allclose(out[0, :, 0], np.round(gray16[0] / 257.0), atol=1)  # smooth ramp, not saturated


def test_cmyk_rgba_gray_palette(tmp_path):
    cmyk = _load_single(tmp_path, Image.new("CMYK", (16, 8), (0, 255, 255, 0)), "c.jpg")
    assert np.abs(cmyk.astype(int) - [255, 0, 0]).max() <= 3  # CMYK(0,1,1,0) is red
    rgba = _load_single(tmp_path, Image.new("RGBA", (16, 8), (10, 200, 30, 0)), "r.png")
    assert rgba[0, 0].tolist() == [10, 200, 30]
    gray = _load_single(tmp_path, Image.new("L", (16, 8), 77), "g.png")
    assert gray[0, 0].tolist() == [77, 77, 77]
    pal = _load_single(tmp_path, Image.new("RGB", (16, 8), (0, 0, 255)).convert("P"), "p.png")
    assert pal[0, 0].tolist() == [0, 0, 255]


def test_exif_orientation_is_applied(tmp_path):
    raw = np.zeros((20, 30, 3), np.uint8)  # stored landscape 30x20, red on the left
    raw[:, :10] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise -> portrait 20x30, red on top
    Image.fromarray(raw).save(tmp_path / "e.jpg", exif=exif, quality=100)
    images = [{"id": 1, "file_name": "e.jpg", "width": 20, "height": 30}]
    ds = make(tmp_path, images=images, annotations=[ann(1, [[0, 0, 20, 0, 20, 10, 0, 10]])], write_images=False)
    assert ds.check_images() == []
    image, target = ds[0]
    assert image.shape == (3, 30, 20)
    assert image[0, :8].mean() > 0.9 and image[0, 12:].mean() < 0.1  # red rows are now at the top
    assert target["boxes"].tolist() == [[0, 0, 20, 10]]
    images[0].update(width=30, height=20)  # json written against the un-rotated pixels
    with pytest.raises(DatasetError, match=r"e\.jpg'.*image id 1.*20x30 after EXIF"):
        make(tmp_path, images=images, annotations=[], write_images=False)[0]


def test_huge_image_loads_and_default_transform_downsizes(tmp_path):
    Image.new("L", (10000, 10000), 77).save(tmp_path / "huge.png", compress_level=1)
    images = [{"id": 1, "file_name": "huge.png", "width": 10000, "height": 10000}]
    ds = make(tmp_path, images=images, annotations=[ann(1, [[0, 0, 5000, 0, 5000, 5000, 0, 5000]])],
              write_images=False, transforms=build_transforms("default", True, min_size=100, max_size=100, hflip_prob=0.0))
    image, target = ds[0]
    assert image.shape == (3, 100, 100) and target["orig_size"] == (10000, 10000)
    assert abs(image[0, 50, 50].item() - 77 / 255) < 1e-6
    assert target["boxes"].tolist() == [[0, 0, 50, 50]] and target["masks"].shape == (1, 100, 100)


# ---------------------------------------------------------------- RLE, iscrowd, category ids
def test_rle_iscrowd_and_noncontiguous_categories(tmp_path):
    h, w = 16, 20
    m_compressed = np.zeros((h, w), np.uint8)
    m_compressed[4:8, 10:18] = 1
    rle = mask_utils.encode(np.asfortranarray(m_compressed))
    compressed = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
    m_crowd = np.zeros((h, w), np.uint8)
    m_crowd[10:14, 1:5] = 1
    flat = m_crowd.flatten(order="F")  # COCO RLE runs are column-major, starting with zeros
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]])))  # run boundaries
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    counts[-1] = h * w - sum(counts[:-1])
    uncompressed = {"size": [h, w], "counts": counts}
    cats = [{"id": 9, "name": "zebra"}, {"id": 3, "name": "ant"}]
    anns = [ann(1, SQUARE, category_id=9), ann(2, compressed, category_id=3),
            {**ann(3, uncompressed, category_id=3), "iscrowd": 1},
            ann(4, {"size": [h, w], "counts": [h * w]}, category_id=3)]  # empty RLE: skipped
    ds = make(tmp_path, annotations=anns, categories=cats)
    assert ds.class_names == ["__background__", "ant", "zebra"]
    assert ds.category_id_to_label == {3: 1, 9: 2} and ds.label_to_category_id == {1: 3, 2: 9}
    assert [s["annotation_id"] for s in ds.skipped] == [4]
    _, target = ds[0]
    assert target["labels"].tolist() == [2, 1]  # crowd never becomes a training instance
    assert target["boxes"].tolist() == [[2, 2, 12, 10], [10, 4, 18, 8]]
    assert np.array_equal(target["masks"][1].numpy(), m_compressed)
    assert target["crowd_boxes"].tolist() == [[1, 10, 5, 14]]


def test_instance_cropped_away_is_dropped_consistently(tmp_path):
    cats = [{"id": 1, "name": "left"}, {"id": 2, "name": "right"}]
    anns = [ann(1, [[15, 2, 19, 2, 19, 6, 15, 6]], category_id=2), ann(2, SQUARE, category_id=1),
            {**ann(3, [[16, 10, 19, 10, 19, 14, 16, 14]], category_id=1), "iscrowd": 1}]

    def keep_left_half(image, masks):  # stands in for a crop augmentation
        return image[:, :13].copy(), masks[:, :, :13].copy()

    _, target = make(tmp_path, annotations=anns, categories=cats, transforms=keep_left_half)[0]
    assert target["labels"].tolist() == [1] and target["boxes"].tolist() == [[2, 2, 12, 10]]
    assert target["masks"].shape == (1, 16, 13) and target["crowd_boxes"].shape == (0, 4)
    assert target["orig_size"] == (16, 20)
