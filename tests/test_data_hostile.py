"""Broken / unusual COCO inputs: each must raise a precise error, be skipped and logged, or load correctly."""

import io
import json
import logging
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from maskrcnn.data.coco import CocoInstanceDataset
from maskrcnn.data.errors import DatasetError
from maskrcnn.data.transforms import build_transforms

SQUARE = [[2, 2, 12, 2, 12, 10, 2, 10]]  # rows 2..9, cols 2..11 -> box [2, 2, 12, 10]


def write_coco(tmp_path, images=None, annotations=None, categories=None, write_images=True):
    """Write a COCO file (default: one 20x16 image with one square) and its images; returns its path."""
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
    return ann_file


def make(tmp_path, images=None, annotations=None, categories=None, write_images=True, **kwargs):
    """Write a COCO file (see ``write_coco``) and build the dataset."""
    return CocoInstanceDataset(tmp_path, write_coco(tmp_path, images, annotations, categories, write_images), **kwargs)


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
        ann(13, [[30, 30, 40, 30, 40, 40]], bbox=[30, 30, 10, 10]),  # entirely outside the 20x16 image
        ann(14, [[1, 1, 5, 5, 9, 9]]),  # collinear -> zero area
    ]
    good = [ann(1, SQUARE), ann(2, [[-5, -5, 6, -5, 6, 6, -5, 6]])]  # negative coords are clipped, not dropped
    # the box comes from the mask: a wrong json bbox does not drop a valid polygon (tests/test_skip_reasons.py)
    good += [ann(12, SQUARE, bbox=[2, 2, -5, 8]), ann(15, SQUARE, bbox=[math.inf, 2, 3, 3])]
    log = tmp_path / "run" / "skipped.jsonl"
    with caplog.at_level(logging.WARNING, logger="maskrcnn.data.coco"):
        ds = make(tmp_path, annotations=good + bad, skipped_log=log)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["annotation_id"] for e in entries] == [10, 11, 13, 14]
    assert all(e["image_id"] == 1 and e["file_name"] == "a.png" and e["annotation_file"].endswith("ann.json") for e in entries)
    reasons = [e["reason"] for e in entries]
    assert "fewer than 3 points" in reasons[0] and "NaN" in reasons[1]
    assert "outside" in reasons[2] and "degenerate polygon (zero area)" in reasons[3]
    assert "skipped 4 item(s)" in caplog.text and str(log) in caplog.text
    _, target = ds[0]
    assert target["labels"].tolist() == [1, 1, 1, 1]
    assert target["boxes"].tolist() == [[2, 2, 12, 10], [0, 0, 6, 6], [2, 2, 12, 10], [2, 2, 12, 10]]


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


# ---------------------------------------------------------------- JSON types: ids, iscrowd, top-level keys
IMG = {"id": 1, "file_name": "a.png", "width": 20, "height": 16}


@pytest.mark.parametrize("images, annotations, categories, pattern", [
    ([{**IMG, "id": "img1"}], [], None, r"image id 'img1' \(images\[0\], file_name 'a\.png'\) must be a JSON integer, got a string \(ids are not converted"),
    ([{**IMG, "id": 3.0}], [], None, r"image id 3\.0 \(images\[0\], .*\) must be a JSON integer, got a float"),
    ([{**IMG, "id": True}], [], None, r"image id True \(images\[0\], .*\) must be a JSON integer, got a boolean"),
    ([IMG, {**IMG, "id": "1", "file_name": "b.png"}], [], None, r"image id '1' \(images\[1\], file_name 'b\.png'\) must be a JSON integer"),
    (None, [ann("5", SQUARE)], None, r"annotation id '5' \(annotations\[0\]\) must be a JSON integer"),
    (None, [ann(5, SQUARE, image_id="1")], None, r"annotation id 5: image_id '1' must be a JSON integer"),
    (None, [ann(5, SQUARE, category_id="1")], None, r"annotation id 5 \(image id 1\): category_id '1' must be"),
    (None, None, [{"id": 1, "name": "a"}, {"id": "2", "name": "b"}], r"category id '2' \(categories\[1\], name 'b'\) must be a JSON integer"),
    (None, None, [{"id": -1, "name": "a"}], r"category id -1 \('a'\) is negative"),
    (None, None, [{"id": 1, "name": None}], r"category id 1 has name None; names must be non-empty strings"),
    (None, [ann(2**70, SQUARE)], None, r"annotation id 1180591620717411303424 \(annotations\[0\]\) is outside the 64-bit integer range"),
])
def test_ids_must_be_json_integers_and_are_never_converted(tmp_path, images, annotations, categories, pattern):
    """Converting "1" to 1 could merge two images; mixed int / str ids must not end in "'<' not supported"."""
    with pytest.raises(DatasetError, match=r"ann\.json: " + pattern):
        make(tmp_path, images=images, annotations=annotations, categories=categories)


def test_iscrowd_must_be_zero_or_one(tmp_path):
    for value, pattern in [("0", r"annotation id 1 \(image id 1\) has iscrowd '0' \(a string\); it must be 0 or 1"),
                           (2, r".*iscrowd 2 \(an integer\)"), (None, r".*iscrowd None \(null\)"), (1.0, r".*iscrowd 1\.0")]:
        with pytest.raises(DatasetError, match=r"ann\.json: " + pattern):
            make(tmp_path, annotations=[{**ann(1, SQUARE), "iscrowd": value}])
    ds = make(tmp_path, annotations=[{**ann(1, SQUARE), "iscrowd": True}, {**ann(2, SQUARE), "iscrowd": False}])
    _, target = ds[0]  # true / false are unambiguous: one crowd region, one instance
    assert len(target["labels"]) == 1 and len(target["crowd_boxes"]) == 1


@pytest.mark.parametrize("key, value, pattern", [
    ("images", None, r"'images' must be a list, got null"),
    ("images", {"1": IMG}, r"'images' must be a list, got an object"),
    ("annotations", "none", r"'annotations' must be a list, got a string"),
    ("categories", None, r"'categories' must be a list, got null"),
    ("images", [], r"'images' is empty$"),
    ("images", [[1, "a.png", 20, 16]], r"images\[0\] must be a JSON object, got a list"),
    ("annotations", [None], r"annotations\[0\] must be a JSON object, got null"),
])
def test_top_level_keys_of_the_wrong_type_are_named(tmp_path, key, value, pattern):
    Image.new("RGB", (20, 16)).save(tmp_path / "a.png")
    doc = {"images": [IMG], "annotations": [], "categories": [{"id": 1, "name": "thing"}], key: value}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match=r"ann\.json: " + pattern):
        CocoInstanceDataset(tmp_path, tmp_path / "ann.json")


@pytest.mark.parametrize("change, pattern", [
    ({"file_name": 7}, r"image id 1 has file_name 7; it must be a non-empty string"),
    ({"file_name": None}, r"image id 1 has file_name None"),
    ({"file_name": ""}, r"image id 1 has file_name ''"),
    ({"width": "20"}, r"image id 1 \('a\.png'\) has width '20'; width and height must be positive JSON integers"),
    ({"width": 20.0}, r"image id 1 \('a\.png'\) has width 20\.0; width"),  # faster-coco-eval rejects 20.0
    ({"height": 0}, r"image id 1 \('a\.png'\) has height 0"),
    ({"width": 20.5}, r"image id 1 \('a\.png'\) has width 20\.5"),
    ({"width": 10**6, "height": 10**6}, r"image id 1 \('a\.png'\) is 1000000x1000000 \(1e\+12 pixels\), more than the image loader decodes"),
])
def test_image_fields_are_checked(tmp_path, change, pattern):
    Image.new("RGB", (20, 16)).save(tmp_path / "a.png")
    with pytest.raises(DatasetError, match=r"ann\.json: " + pattern):
        make(tmp_path, images=[{**IMG, **change}], write_images=False)


# ---------------------------------------------------------------- segmentation shapes and values
@pytest.mark.parametrize("segmentation, reason", [
    ([2, 2, 12, 2, 12, 10], "segmentation must be a list of polygons; wrap it in another list"),
    ([[[2, 2], [12, 2], [12, 10]]], "polygon 0 is a list of [x, y] point pairs; COCO polygons are flat lists"),
    ([SQUARE[0], "2 2 12 2 12 10"], "polygon 1 is a string, expected a flat list"),
    ([[2, 2, 12, 2, 12]], "polygon 0 has an odd number of coordinates (5)"),
    ([[1, 1, 2, 1, 1, 2]] * 1001, "1001 polygons in one annotation, more than 1000 (pycocotools merges them in quadratic time"),
    ([[2, 2, 12, "2", 12, 10]], "polygon 0 has non-numeric coordinates (e.g. '2')"),
    ([[2, 2, 12, None, 12, 10]], "polygon 0 has non-numeric coordinates (e.g. None)"),
    ([[2, 2, 12, 2, 12, 10**400]], "polygon 0 has a coordinate too large for a 64-bit float"),
    ([], "empty polygon list"),
    ("polygon", "segmentation is a string; expected a list of polygons or an RLE object"),
    (None, "segmentation is null"),
    ({"size": [16, 20]}, "RLE must have 'size' and 'counts'"),
    ({"size": [16.0, 20], "counts": "PP"}, "RLE size [16.0, 20] must be [height, width]"),
    ({"size": [16, 20], "counts": 5}, "RLE counts is an integer"),
    ({"size": [16, 20], "counts": [100, "20", 200]}, "uncompressed RLE counts must be a list of non-negative integers"),
    ({"size": [16, 20], "counts": [100, 20]}, "uncompressed RLE counts sum to 120, not height*width = 320"),
    ({"size": [16, 20], "counts": [400, -80]}, "uncompressed RLE counts must be non-negative"),
    ({"size": [16, 20], "counts": "garbage!!"}, "character 'r' at position 2 is not in the RLE alphabet"),
    ({"size": [16, 20], "counts": ";4"}, "compressed RLE counts string cannot be decoded: its runs sum to 15 pixels"),
    ({"size": [16, 20], "counts": "PPPP"}, "compressed RLE counts string cannot be decoded: it ends inside a number"),
    ({"size": [16, 20], "counts": ""}, "compressed RLE counts string is empty"),
    ({"size": [1000000, 1000000], "counts": [10**12]}, "RLE size [1000000, 1000000] does not match image size [16, 20]"),
    ([[0, 0, 1e8, 0, 1e8, 1e8, 0, 1e8]], "polygon coordinates reach far outside the 20x16 image (x from 0 to 1e+08"),
    ([[0, 0, 20, 16] * 1000], "polygon outline is 4e+04 px long (2000 points), more than 100 perimeters of the 20x16"),
])
def test_malformed_segmentations_are_skipped_with_a_precise_reason(tmp_path, segmentation, reason):
    """Each one used to crash or mislead later: pycocotools aborts the process on some RLE strings
    (';4': "free(): invalid size"), and a polygon reaching 1e8 (or zig-zagging across the image
    many times) made it allocate gigabytes."""
    ds = make(tmp_path, annotations=[ann(1, SQUARE), ann(2, segmentation)])
    assert [s["annotation_id"] for s in ds.skipped] == [2]
    assert reason in ds.skipped[0]["reason"]
    _, target = ds[0]  # the rest of the image still loads
    assert target["boxes"].tolist() == [[2, 2, 12, 10]]


def test_boxes_far_outside_or_of_the_wrong_type_do_not_drop_a_valid_mask(tmp_path):
    ds = make(tmp_path, annotations=[ann(1, SQUARE, bbox=[2, 2, 10, 8]), ann(2, SQUARE, bbox=[2, 2, 1e9, 8]),
                                     ann(3, SQUARE, bbox=["2", 2, 10, 8]), ann(4, SQUARE, bbox=None)])
    assert ds.skipped == []  # training takes the box from the mask, as the fit report does
    assert len(ds[0][1]["labels"]) == 4


def test_validation_split_rejects_what_coco_evaluation_cannot_read(tmp_path):
    """COCO evaluation reads the val json itself: NaN polygons make faster-coco-eval throw
    std::bad_alloc and pycocotools segfault, flat polygons and garbage RLE raise; skipping them in
    the loader would leave the crash for the end of the first epoch."""
    bad = [ann(2, [2, 2, 12, 2, 12, 10], bbox=[2, 2, 10, 8], area=80),
           ann(3, {"size": [16, 20], "counts": "garbage!!"}, bbox=[2, 2, 10, 8], area=80)]
    good = [ann(1, SQUARE, bbox=[2, 2, 10, 8], area=80), ann(4, [[1, 1, 5, 5, 9, 9]], bbox=[1, 1, 8, 8], area=1)]
    with pytest.raises(DatasetError) as info:
        make(tmp_path, annotations=good + bad, for_evaluation=True)
    message = str(info.value)
    assert "ann.json: 2 annotation(s) cannot be read as COCO ground truth" in message
    assert "annotation id 2 (image id 1): segmentation must be a list of polygons" in message
    assert "annotation id 3 (image id 1): compressed RLE counts string cannot be decoded" in message
    ds = make(tmp_path, annotations=good, for_evaluation=True)  # zero-area geometry: skipped, evaluation copes
    assert [s["annotation_id"] for s in ds.skipped] == [4]
    with pytest.raises(DatasetError, match=r"ann\.json: annotation id 0 .*ids must be >= 1"):
        make(tmp_path, annotations=[ann(0, SQUARE, bbox=[2, 2, 10, 8], area=80)], for_evaluation=True)
    with pytest.raises(DatasetError, match=r"ann\.json: annotation id 1 \(image id 1\) has area '80'; COCO evaluation needs a number"):
        make(tmp_path, annotations=[ann(1, SQUARE, bbox=[2, 2, 10, 8], area="80")], for_evaluation=True)


def test_few_surviving_annotations_warn_loudly(tmp_path, caplog):
    anns = [ann(1, SQUARE)] + [ann(i, [[1, 1, 5, 5]]) for i in range(2, 202)]
    with caplog.at_level(logging.WARNING, logger="maskrcnn.data.coco"):
        make(tmp_path, annotations=anns, skipped_log=tmp_path / "skipped_train.jsonl")
    assert f"only 1 of 201 annotations (0.50%) passed the checks" in caplog.text
    assert str(tmp_path / "skipped_train.jsonl") in caplog.text


# ---------------------------------------------------------------- compressed RLE strings vs pycocotools
def _reference_runs(counts: str) -> list[int]:
    """pycocotools' rleFrString in Python, with its unsigned 32-bit runs."""
    runs, p = [], 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            c = ord(counts[p]) - 48
            x |= (c & 0x1F) << 5 * k
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << 5 * k
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x % 2**32)
    return runs


def test_compressed_rle_check_agrees_with_pycocotools():
    """Valid strings pass with their exact area; of mutated strings exactly those whose runs sum
    to height*width pass, and pycocotools decodes every one that passes into a clean 0/1 mask."""
    from maskrcnn.data.rle_checks import MAX_NUMBER_CHARS, compressed_rle_problems

    rng = np.random.default_rng(0)
    strings, totals, masks = [], [], []
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(1, 60, 2))
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        strings.append(mask_utils.encode(np.asfortranarray(mask))["counts"].decode("ascii"))
        totals.append(h * w)
        masks.append(mask)
    for problem, mask in zip(compressed_rle_problems(strings, totals), masks):
        assert (problem is None) == bool(mask.any())  # an empty mask is skipped as empty, not as broken
    mutated, mutated_totals, passed = [], [], 0
    for s, total in zip(strings, totals):
        for _ in range(20):
            chars = list(s)
            pos = int(rng.integers(0, len(chars)))
            op = rng.integers(0, 3)
            if op == 0:
                chars[pos] = chr(int(rng.integers(48, 112)))
            elif op == 1 and len(chars) > 1:
                del chars[pos]
            else:
                chars.insert(pos, chr(int(rng.integers(48, 112))))
            mutated.append("".join(chars))
            mutated_totals.append(total)
    for s, total, problem in zip(mutated, mutated_totals, compressed_rle_problems(mutated, mutated_totals)):
        closed = (ord(s[-1]) - 48) & 0x20 == 0
        longest = max(len(n) for n in re.findall(r"[\x50-\x6f]*[\x30-\x4f]", s)) if closed else 0
        expected = closed and longest <= MAX_NUMBER_CHARS and sum(_reference_runs(s)) == total
        assert (problem is None or not problem.malformed) == expected, s
        if expected:
            passed += 1
            h = next(h for h in range(1, total + 1) if total % h == 0)
            decoded = mask_utils.decode({"size": [h, total // h], "counts": s})
            assert set(np.unique(decoded).tolist()) <= {0, 1}
            assert int(decoded.sum()) == sum(_reference_runs(s)[1::2])
    assert passed > 20  # the mutations do produce valid strings too


# ---------------------------------------------------------------- the data module: setup checks
def _split(root, name, annotations, categories=None, images=2):
    folder = root / name
    folder.mkdir()
    imgs = [{"id": i, "file_name": f"{i}.png", "width": 40, "height": 32} for i in range(1, images + 1)]
    for img in imgs:
        Image.new("RGB", (40, 32), (90, 20, 30)).save(folder / img["file_name"])
    cats = categories or [{"id": 1, "name": "thing"}]
    (folder / "ann.json").write_text(json.dumps({"images": imgs, "annotations": annotations, "categories": cats}))
    return {"image_dir": str(folder), "annotation_file": str(folder / "ann.json")}


def _datamodule(tmp_path, train_annotations, val_annotations=None, train_categories=None, val_categories=None, **kwargs):
    from maskrcnn.data.datamodule import CocoDataModule

    val_annotations = [ann(1, SQUARE, bbox=[2, 2, 10, 8], area=80)] if val_annotations is None else val_annotations
    options = {"num_workers": 0, "augmentation": {"name": "default", "min_size": 32, "max_size": 64},
               "skipped_log_dir": str(tmp_path / "run"), **kwargs}
    return CocoDataModule(train=_split(tmp_path, "train", train_annotations, train_categories),
                          val=_split(tmp_path, "val", val_annotations, val_categories), **options)


@pytest.mark.parametrize("annotations, reason", [
    ([], r"the file has 2 image\(s\) but no annotations"),
    ([{**ann(1, SQUARE), "iscrowd": 1}, {**ann(2, SQUARE, image_id=2), "iscrowd": 1}],
     r"of its 2 annotation\(s\), 2 are crowd regions \(iscrowd=1\), which are never training instances"),
    ([ann(1, [[1, 1, 5, 5]]), ann(2, [[1, 1, 5, 5, 9, 9]])],
     r"2 were skipped as unusable \(most often: polygon with fewer than 3 points \(2\); all listed in .*skipped_train\.jsonl\)"),
])
def test_zero_training_instances_stop_setup(tmp_path, annotations, reason):
    dm = _datamodule(tmp_path, annotations)
    with pytest.raises(DatasetError, match=r"train split \(.*train/ann\.json\): no training instance left: .*" + reason):
        dm.setup("fit")


def test_zero_training_instances_after_unreadable_images(tmp_path):
    dm = _datamodule(tmp_path, [ann(1, SQUARE)])
    (tmp_path / "train" / "1.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"train split .*: no training instance left: of its 1 annotation\(s\), 1 are on images that were excluded as unreadable"):
        dm.setup("fit")


@pytest.mark.parametrize("augmentation, pattern", [
    ({"name": "default", "min_size": 0, "max_size": 64}, r"augmentation\.min_size=0: must be a whole number of pixels in 1\.\.16384"),
    ({"name": "default", "min_size": 32, "max_size": "big"}, r"augmentation\.max_size='big'"),
    ({"name": "default", "min_size": 800.5, "max_size": 1333}, r"augmentation\.min_size=800\.5"),
    ({"name": "multiscale", "multiscale_sizes": [640, -1]}, r"augmentation\.multiscale_sizes=-1"),
    ({"name": "lsj", "lsj_scale": [2.0, 0.1]}, r"augmentation\.lsj_scale=\[2\.0, 0\.1\]: must be \[low, high\]"),
])
def test_augmentation_sizes_are_checked_where_read(tmp_path, augmentation, pattern):
    from maskrcnn.training.config_checks import ConfigError

    with pytest.raises(ConfigError, match=pattern):  # an expected error: one message, no traceback
        _datamodule(tmp_path, [ann(1, SQUARE)], augmentation=augmentation)


def test_resize_that_loses_every_instance_stops_setup(tmp_path):
    """min_size=1 keeps the config valid but shrinks the 40x32 images to 1 px: no instance survives."""
    anns = [ann(1, [[2, 2, 6, 2, 6, 6, 2, 6]]), ann(2, [[30, 20, 34, 20, 34, 24]], image_id=2)]
    dm = _datamodule(tmp_path, anns, augmentation={"name": "default", "min_size": 1, "max_size": 2})
    with pytest.raises(DatasetError, match=r"train split .*with augmentation 'default' \(augmentation\.min_size=1, "
                                           r"augmentation\.max_size=2\) even the largest instances have no pixel left"):
        dm.setup("fit")
    (tmp_path / "ok").mkdir()
    dm = _datamodule(tmp_path / "ok", anns, augmentation={"name": "default", "min_size": 8, "max_size": 16})
    dm.setup("fit")  # 8 px keeps the larger square: training starts
    assert sum(len(t["labels"]) for _, t in (dm.train_dataset[i] for i in range(2))) >= 1


def test_category_names_must_agree_across_splits(tmp_path):
    dm = _datamodule(tmp_path, [ann(1, SQUARE)], train_categories=[{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
                     val_categories=[{"id": 1, "name": "cat"}, {"id": 2, "name": "wolf"}])
    with pytest.raises(DatasetError, match=r"train \(.*train/ann\.json\) and val \(.*val/ann\.json\) annotation files "
                                           r"give categories different names \(train vs val: id 2: 'dog' vs 'wolf'\)"):
        dm.setup("fit")


# ---------------------------------------------------------------- browse_dataset.py on the same inputs
def _browse(tmp_path, monkeypatch, capsys, caplog):
    """Run scripts/browse_dataset.py in this process (a subprocess would spend seconds importing torch)."""
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "browse_dataset.py"
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)  # conftest sets it; the script must end as a user sees it
    monkeypatch.setattr("sys.argv", ["browse_dataset.py", "--images", str(tmp_path), "--ann", str(tmp_path / "ann.json"),
                                     "--min-size", "32", "--max-size", "64", "--out", str(tmp_path / "out")])
    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit) as info:
        runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr()
    return info.value.code, out.err + caplog.text


def test_browse_dataset_reports_bad_json_without_traceback(tmp_path, monkeypatch, capsys, caplog):
    write_coco(tmp_path, annotations=[ann(1, SQUARE, image_id="1")])
    code, err = _browse(tmp_path, monkeypatch, capsys, caplog)
    assert code == 1  # a DatasetError is printed, not raised (no traceback)
    assert "Traceback" not in err
    assert "DatasetError: " in err and "ann.json: annotation id 1: image_id '1' must be a JSON integer" in err


def test_browse_dataset_skips_bad_annotations_and_names_unreadable_images(tmp_path, monkeypatch, capsys, caplog):
    images = [IMG, {**IMG, "id": 2, "file_name": "b.png"}]
    anns = [ann(1, SQUARE), ann(2, {"size": [16, 20], "counts": ";4"}), ann(3, SQUARE, image_id=2)]
    write_coco(tmp_path, annotations=anns, images=images)
    (tmp_path / "b.png").write_bytes(b"truncated")
    code, err = _browse(tmp_path, monkeypatch, capsys, caplog)
    assert code == 1
    assert "skipped 1 item(s) (1x compressed RLE counts string cannot be decoded" in err
    assert "b.png' (image id 2) cannot be read as an image" in err
    assert "1 of 2 picked image(s) could not be read" in err
    assert len(list((tmp_path / "out").glob("*.png"))) == 1


# ---------------------------------------------------------------- through the config and train(cfg)
def _folder_cfg(tmp_path, train_annotations, *overrides):
    from helpers.config import TINY, compose

    root = tmp_path / "data"
    root.mkdir()
    train, val = _split(root, "train", train_annotations), _split(root, "val", [ann(1, SQUARE, bbox=[2, 2, 10, 8], area=80)])
    folder = [o for o in TINY if not o.startswith("data.generate_shapes")]
    return compose([*folder, "data=folder", "data.num_classes=1", f"data.root={root}",
                    f"data.train.annotation_file={train['annotation_file']}",
                    f"data.val.annotation_file={val['annotation_file']}", *overrides], output_dir=tmp_path / "run")


def test_augmentation_size_from_the_command_line_is_named(tmp_path):
    from maskrcnn.training.builders import build_datamodule

    with pytest.raises(Exception) as info:  # Hydra's instantiate wraps it in an InstantiationException
        build_datamodule(_folder_cfg(tmp_path, [ann(1, SQUARE)], "augmentation.min_size=0"))
    from maskrcnn.cli import expected_error

    cause = expected_error(info.value)  # what src/train.py prints as its one message
    assert cause is not None and str(cause).startswith("augmentation.min_size=0: must be a whole number")


def test_crowd_only_training_data_stops_before_the_first_step(tmp_path, monkeypatch):
    """Used to train a full run on zero instances and exit 0."""
    from maskrcnn.training.module import MaskRCNNModule
    from maskrcnn.training.pipeline import train

    monkeypatch.setattr(MaskRCNNModule, "training_step", lambda *args: pytest.fail("training started"))
    cfg = _folder_cfg(tmp_path, [{**ann(1, SQUARE), "iscrowd": 1}, {**ann(2, SQUARE, image_id=2), "iscrowd": 1}])
    with pytest.raises(DatasetError, match=r"train split \(.*train/ann\.json\): no training instance left: .*2 are crowd"):
        train(cfg)


# ---------------------------------------------------------------- data-module config values are expected errors
@pytest.mark.parametrize("options, pattern", [
    ({"bad_images": "ignore"}, r"data\.bad_images='ignore': expected one of"),
    ({"check_images": "fast"}, r"data\.check_images='fast': expected one of"),
    ({"augmentation": {"min_size": 32}}, r"augmentation\.name must be set"),
    ({"augmentation": {"name": "default", "min_size": 32, "max_size": 64, "flip": 0.5}},
     r"augmentation='default' with .*'flip': 0\.5.*unexpected keyword"),
])
def test_data_options_are_config_errors_naming_the_key(tmp_path, options, pattern):
    """A ConfigError ends src/train.py with its one message; a plain ValueError kept Hydra's traceback."""
    from maskrcnn.training.config_checks import ConfigError

    with pytest.raises(ConfigError, match=pattern):
        _datamodule(tmp_path, [ann(1, SQUARE)], **options)


def test_num_classes_mismatch_is_a_config_error(tmp_path):
    from maskrcnn.training.config_checks import ConfigError

    dm = _datamodule(tmp_path, [ann(1, SQUARE)], num_classes=7)
    with pytest.raises(ConfigError, match=r"data\.num_classes=7 \(model\.num_classes\) but train annotations "
                                          r".*train/ann\.json have 1 categories: \['thing'\]"):
        dm.setup("fit")


# ---------------------------------------------------------------- every tool reads the same json the same way
def _report(path, monkeypatch, capsys, *extra):
    """Run scripts/dataset_report.py in this process; returns (exit status, stdout, stderr)."""
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "dataset_report.py"
    monkeypatch.setattr("sys.argv", ["dataset_report.py", "--train", str(path), "--min-size", "32", "--max-size", "64",
                                     *extra])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def _with(**changes):
    """A mutation of the default document of ``write_coco``: top-level keys replaced."""
    return lambda doc: doc.update(changes)


def _all(key, fn, *where):
    def mutate(doc):
        for name in where:
            for item in doc[name]:
                if key in item:
                    item[key] = fn(item[key])
    return mutate


HOSTILE_JSON = [  # (mutation of a valid two-image document, what every tool must say)
    (lambda d: (_all("id", lambda v: f"img{v}", "images")(d), _all("image_id", lambda v: f"img{v}", "annotations")(d)),
     r"image id 'img1' \(images\[0\], file_name 'a\.png'\) must be a JSON integer, got a string"),
    (lambda d: (_all("id", str, "categories")(d), _all("category_id", str, "annotations")(d)),
     r"category id '1' \(categories\[0\], name 'thing'\) must be a JSON integer, got a string"),
    (lambda d: d["categories"].append({"id": "2", "name": "other"}),
     r"category id '2' \(categories\[1\], name 'other'\) must be a JSON integer"),
    (lambda d: d["images"][1].update(id="1"), r"image id '1' \(images\[1\], file_name 'b\.png'\) must be a JSON integer"),
    (_all("iscrowd", lambda v: "0", "annotations"), r"annotation id 1 \(image id 1\) has iscrowd '0' \(a string\)"),
    (_with(images=None), r"'images' must be a list, got null"),
    (_with(images=[], annotations=[]), r"'images' is empty"),
    (lambda d: d["images"][0].update(file_name=7), r"image id 1 has file_name 7; it must be a non-empty string"),
    (lambda d: d["images"][0].update(file_name=None), r"image id 1 has file_name None"),
    (lambda d: d["images"][0].update(width=10**9, height=10**9), r"image id 1 \('a\.png'\) is 1000000000x1000000000"),
]


@pytest.mark.parametrize("tool", ["train", "eval", "browse", "report"])
@pytest.mark.parametrize("mutate, pattern", HOSTILE_JSON, ids=[
    "image-ids-str", "category-ids-str", "category-ids-mixed", "image-id-1-and-'1'", "iscrowd-'0'", "images-null",
    "images-empty", "file_name-number", "file_name-null", "width-absurd"])
def test_every_tool_rejects_the_same_json_naming_file_and_key(tmp_path, monkeypatch, capsys, caplog, tool, mutate, pattern):
    """train / eval (the data module's two datasets), browse_dataset.py and dataset_report.py read the
    same json with the same checks: never a conversion, never a deep traceback."""
    images = [IMG, {**IMG, "id": 2, "file_name": "b.png"}]
    path = write_coco(tmp_path, images=images, annotations=[ann(1, SQUARE, bbox=[2, 2, 10, 8], area=80),
                                                            ann(2, SQUARE, image_id=2, bbox=[2, 2, 10, 8], area=80)])
    doc = json.loads(path.read_text())
    mutate(doc)
    path.write_text(json.dumps(doc))
    if tool in ("train", "eval"):
        with pytest.raises(DatasetError, match=r"ann\.json: " + pattern):
            CocoInstanceDataset(tmp_path, path, for_evaluation=tool == "eval")
        return
    if tool == "browse":
        code, err = _browse(tmp_path, monkeypatch, capsys, caplog)
    else:
        code, _, err = _report(path, monkeypatch, capsys)
    assert code == (1 if tool == "browse" else 2) and "Traceback" not in err
    assert re.search(r"ann\.json: " + pattern, err), err


def test_dataset_report_runs_the_training_checks(tmp_path, monkeypatch, capsys, caplog):
    """Skipped annotations are listed as in training; a file training refuses is refused."""
    path = write_coco(tmp_path, annotations=[ann(1, SQUARE, bbox=[2, 2, 10, 8]),
                                             ann(2, {"size": [16, 20], "counts": "garbage!!"}, bbox=[2, 2, 10, 8])])
    with caplog.at_level(logging.WARNING):  # the script's warnings (pytest owns the root logger's handlers)
        code, out, err = _report(path, monkeypatch, capsys)
    assert code == 0 and "Dataset fit report" in out
    assert re.search(r"ann\.json: skipped 1 item\(s\) \(1x compressed RLE counts string cannot be decoded", caplog.text)
    write_coco(tmp_path, annotations=[{**ann(1, SQUARE), "iscrowd": 1}])
    code, _, err = _report(path, monkeypatch, capsys)
    assert code == 2 and "no training instance left: of its 1 annotation(s), 1 are crowd regions" in err
    write_coco(tmp_path, annotations=[ann(1, SQUARE, bbox=[2, 2, 10, 8], area=80)])
    val = tmp_path / "val.json"
    val.write_text(json.dumps({**json.loads(path.read_text()), "categories": [{"id": 1, "name": "other"}]}))
    code, _, err = _report(path, monkeypatch, capsys, "--val", str(val))
    assert code == 2 and "give categories different names (train vs val: id 1: 'thing' vs 'other')" in err


# ---------------------------------------------------------------- memory: what passes setup must load
def test_masks_of_a_crowded_image_are_checked_against_memory(tmp_path, caplog):
    """N masks of one image are allocated together (plus the model's float copy): thousands of
    instances passed setup and then killed the process without a message."""
    from maskrcnn.data.setup_checks import MASK_BYTES_PER_PIXEL, check_mask_memory, pipeline_scale

    images = [IMG, {**IMG, "id": 2, "file_name": "b.png"}]
    anns = [ann(k, SQUARE) for k in range(1, 51)] + [ann(51, SQUARE, image_id=2)]
    ds = make(tmp_path, images=images, annotations=anns)
    need = 50 * 32 * 40 * MASK_BYTES_PER_PIXEL  # image 1 at twice its size (min_size 32 on a 20x16 image)
    scale = pipeline_scale("default", {"min_size": 32, "max_size": 64})
    check_mask_memory(ds, "train", scale, limit=need, warn=need)  # exactly fits: silent
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        check_mask_memory(ds, "train", scale, limit=need, warn=need - 1)
    assert re.search(r"train split \(.*ann\.json\): image id 1 \('a\.png'\) has 50 instance and crowd masks; at 40x32 px", caplog.text)
    with pytest.raises(DatasetError, match=r"image id 1 .* has 50 .* need about 0\.0 GiB .*more than this machine's "
                                           r"0\.0 GiB of memory; lower augmentation\.min_size / max_size"):
        check_mask_memory(ds, "train", scale, limit=need - 1, warn=0)
    with pytest.raises(DatasetError, match=r"val split .* at 20x16 px.*resize the validation images on disk"):
        check_mask_memory(ds, "val", pipeline_scale("none", {}), limit=need // 4 - 1, warn=0)


def test_images_sharing_a_file_are_warned(tmp_path, caplog):
    """Two records of one photo each train with only their own objects: the others become background."""
    images = [IMG, {**IMG, "id": 2}, {**IMG, "id": 3, "file_name": "b.png"}]
    with caplog.at_level(logging.WARNING):
        make(tmp_path, images=images, annotations=[ann(1, SQUARE), ann(2, SQUARE, image_id=2)])
    assert re.search(r"ann\.json: 1 file name\(s\) are used by more than one image record, each of which is loaded "
                     r"with only its own annotations \('a\.png': image ids \[1, 2\]\)", caplog.text)


# ---------------------------------------------------------------- evaluation: the checkpoint's categories
def test_eval_rejects_a_val_file_whose_categories_differ_from_the_checkpoint(tmp_path, shapes_dir):
    """The checkpoint's class names label the predictions; a val file naming the ids differently
    would give an AP table under the wrong names."""
    import shutil

    from helpers.config import compose
    from helpers.random_checkpoint import save_random_checkpoint
    from maskrcnn.training.pipeline import evaluate

    ckpt = save_random_checkpoint(tmp_path / "random.ckpt", data_dir=shapes_dir)
    val_dir = tmp_path / "val"
    shutil.copytree(shapes_dir / "shapes" / "val", val_dir)
    doc = json.loads((val_dir / "annotations.json").read_text())
    doc["categories"] = [{**c, "name": "hexagon"} if c["id"] == 2 else c for c in doc["categories"]]
    (val_dir / "annotations.json").write_text(json.dumps(doc))
    overrides = [f"ckpt_path={ckpt}", f"data.val.image_dir={val_dir}",
                 f"data.val.annotation_file={val_dir / 'annotations.json'}", "data.num_workers=0"]
    cfg = compose(overrides, config_name="eval", output_dir=tmp_path / "eval", data_dir=tmp_path / "nothing")
    with pytest.raises(DatasetError, match=r"checkpoint \(.*random\.ckpt\) and the val annotations \(.*val/annotations"
                                           r"\.json\) give categories different names \(checkpoint vs val: id 2: 'circle' vs 'hexagon'\)"):
        evaluate(cfg, overrides=overrides)
