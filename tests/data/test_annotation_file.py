"""The annotation json: structural errors raise naming file and id, bad geometry is skipped and logged."""

import json
import logging
import math

import pytest
from PIL import Image

from helpers.coco_files import IMG, SQUARE, ann, make
from maskrcnn.data.coco import CocoInstanceDataset
from maskrcnn.errors import DatasetError


# ---------------------------------------------------------------- structural errors raise
def test_unknown_image_id(tmp_path):
    with pytest.raises(DatasetError, match=r"ann\.json.*annotation id 7 refers to unknown image id 99"):
        make(tmp_path, annotations=[ann(7, SQUARE, image_id=99)])


def test_unknown_category(tmp_path):
    with pytest.raises(DatasetError, match=r"ann\.json.*annotation id 3 \(image id 1\).*unknown category id 5"):
        make(tmp_path, annotations=[ann(3, SQUARE, category_id=5)])


def test_duplicate_image_ids(tmp_path):
    imgs = [
        {"id": 4, "file_name": "a.png", "width": 20, "height": 16},
        {"id": 4, "file_name": "b.png", "width": 20, "height": 16},
    ]
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
    assert all(
        e["image_id"] == 1 and e["file_name"] == "a.png" and e["annotation_file"].endswith("ann.json") for e in entries
    )
    reasons = [e["reason"] for e in entries]
    assert "fewer than 3 points" in reasons[0] and "NaN" in reasons[1]
    assert "outside" in reasons[2] and "degenerate polygon (zero area)" in reasons[3]
    assert "skipped 4 item(s)" in caplog.text and str(log) in caplog.text
    _, target = ds[0]
    assert target["labels"].tolist() == [1, 1, 1, 1]
    assert target["boxes"].tolist() == [[2, 2, 12, 10], [0, 0, 6, 6], [2, 2, 12, 10], [2, 2, 12, 10]]


def test_keep_empty_false_excludes_and_logs(tmp_path):
    imgs = [
        {"id": 1, "file_name": "a.png", "width": 20, "height": 16},
        {"id": 2, "file_name": "b.png", "width": 20, "height": 16},
    ]
    assert len(make(tmp_path, images=imgs)) == 2
    ds = make(tmp_path, images=imgs, keep_empty=False)
    assert len(ds) == 1 and ds.skipped[0]["image_id"] == 2 and "keep_empty" in ds.skipped[0]["reason"]
    _, target = make(tmp_path, images=imgs)[1]  # an empty image gives well-formed empty tensors
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,) and target["masks"].shape == (0, 16, 20)


# ---------------------------------------------------------------- JSON types: ids, iscrowd, top-level keys


@pytest.mark.parametrize(
    "images, annotations, categories, pattern",
    [
        (
            [{**IMG, "id": "img1"}],
            [],
            None,
            r"image id 'img1' \(images\[0\], file_name 'a\.png'\) must be a JSON integer, got a string "
            r"\(ids are not converted",
        ),
        ([{**IMG, "id": 3.0}], [], None, r"image id 3\.0 \(images\[0\], .*\) must be a JSON integer, got a float"),
        ([{**IMG, "id": True}], [], None, r"image id True \(images\[0\], .*\) must be a JSON integer, got a boolean"),
        (
            [IMG, {**IMG, "id": "1", "file_name": "b.png"}],
            [],
            None,
            r"image id '1' \(images\[1\], file_name 'b\.png'\) must be a JSON integer",
        ),
        (None, [ann("5", SQUARE)], None, r"annotation id '5' \(annotations\[0\]\) must be a JSON integer"),
        (None, [ann(5, SQUARE, image_id="1")], None, r"annotation id 5: image_id '1' must be a JSON integer"),
        (None, [ann(5, SQUARE, category_id="1")], None, r"annotation id 5 \(image id 1\): category_id '1' must be"),
        (
            None,
            None,
            [{"id": 1, "name": "a"}, {"id": "2", "name": "b"}],
            r"category id '2' \(categories\[1\], name 'b'\) must be a JSON integer",
        ),
        (None, None, [{"id": -1, "name": "a"}], r"category id -1 \('a'\) is negative"),
        (None, None, [{"id": 1, "name": None}], r"category id 1 has name None; names must be non-empty strings"),
        (
            None,
            [ann(2**70, SQUARE)],
            None,
            r"annotation id 1180591620717411303424 \(annotations\[0\]\) is outside the 64-bit integer range",
        ),
    ],
)
def test_ids_must_be_json_integers_and_are_never_converted(tmp_path, images, annotations, categories, pattern):
    """Converting "1" to 1 could merge two images; mixed int / str ids must not end in "'<' not supported"."""
    with pytest.raises(DatasetError, match=r"ann\.json: " + pattern):
        make(tmp_path, images=images, annotations=annotations, categories=categories)


def test_iscrowd_must_be_zero_or_one(tmp_path):
    for value, pattern in [
        ("0", r"annotation id 1 \(image id 1\) has iscrowd '0' \(a string\); it must be 0 or 1"),
        (2, r".*iscrowd 2 \(an integer\)"),
        (None, r".*iscrowd None \(null\)"),
        (1.0, r".*iscrowd 1\.0"),
    ]:
        with pytest.raises(DatasetError, match=r"ann\.json: " + pattern):
            make(tmp_path, annotations=[{**ann(1, SQUARE), "iscrowd": value}])
    ds = make(tmp_path, annotations=[{**ann(1, SQUARE), "iscrowd": True}, {**ann(2, SQUARE), "iscrowd": False}])
    _, target = ds[0]  # true / false are unambiguous: one crowd region, one instance
    assert len(target["labels"]) == 1 and len(target["crowd_boxes"]) == 1


@pytest.mark.parametrize(
    "key, value, pattern",
    [
        ("images", None, r"'images' must be a list, got null"),
        ("images", {"1": IMG}, r"'images' must be a list, got an object"),
        ("annotations", "none", r"'annotations' must be a list, got a string"),
        ("categories", None, r"'categories' must be a list, got null"),
        ("images", [], r"'images' is empty$"),
        ("images", [[1, "a.png", 20, 16]], r"images\[0\] must be a JSON object, got a list"),
        ("annotations", [None], r"annotations\[0\] must be a JSON object, got null"),
    ],
)
def test_top_level_keys_of_the_wrong_type_are_named(tmp_path, key, value, pattern):
    Image.new("RGB", (20, 16)).save(tmp_path / "a.png")
    doc = {"images": [IMG], "annotations": [], "categories": [{"id": 1, "name": "thing"}], key: value}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match=r"ann\.json: " + pattern):
        CocoInstanceDataset(tmp_path, tmp_path / "ann.json")


@pytest.mark.parametrize(
    "change, pattern",
    [
        ({"file_name": 7}, r"image id 1 has file_name 7; it must be a non-empty string"),
        ({"file_name": None}, r"image id 1 has file_name None"),
        ({"file_name": ""}, r"image id 1 has file_name ''"),
        ({"width": "20"}, r"image id 1 \('a\.png'\) has width '20'; width and height must be positive JSON integers"),
        ({"width": 20.0}, r"image id 1 \('a\.png'\) has width 20\.0; width"),  # faster-coco-eval rejects 20.0
        ({"height": 0}, r"image id 1 \('a\.png'\) has height 0"),
        ({"width": 20.5}, r"image id 1 \('a\.png'\) has width 20\.5"),
        (
            {"width": 10**6, "height": 10**6},
            r"image id 1 \('a\.png'\) is 1000000x1000000 \(1e\+12 pixels\), more than the image loader decodes",
        ),
    ],
)
def test_image_fields_are_checked(tmp_path, change, pattern):
    Image.new("RGB", (20, 16)).save(tmp_path / "a.png")
    with pytest.raises(DatasetError, match=r"ann\.json: " + pattern):
        make(tmp_path, images=[{**IMG, **change}], write_images=False)


# ---------------------------------------------------------------- segmentation shapes and values
@pytest.mark.parametrize(
    "segmentation, reason",
    [
        ([2, 2, 12, 2, 12, 10], "segmentation must be a list of polygons; wrap it in another list"),
        ([[[2, 2], [12, 2], [12, 10]]], "polygon 0 is a list of [x, y] point pairs; COCO polygons are flat lists"),
        ([SQUARE[0], "2 2 12 2 12 10"], "polygon 1 is a string, expected a flat list"),
        ([[2, 2, 12, 2, 12]], "polygon 0 has an odd number of coordinates (5)"),
        (
            [[1, 1, 2, 1, 1, 2]] * 1001,
            "1001 polygons in one annotation, more than 1000 (pycocotools merges them in quadratic time",
        ),
        ([[2, 2, 12, "2", 12, 10]], "polygon 0 has non-numeric coordinates (e.g. '2')"),
        ([[2, 2, 12, None, 12, 10]], "polygon 0 has non-numeric coordinates (e.g. None)"),
        ([[2, 2, 12, 2, 12, 10**400]], "polygon 0 has a coordinate too large for a 64-bit float"),
        ([], "empty polygon list"),
        ("polygon", "segmentation is a string; expected a list of polygons or an RLE object"),
        (None, "segmentation is null"),
        ({"size": [16, 20]}, "RLE must have 'size' and 'counts'"),
        ({"size": [16.0, 20], "counts": "PP"}, "RLE size [16.0, 20] must be [height, width]"),
        ({"size": [16, 20], "counts": 5}, "RLE counts is an integer"),
        (
            {"size": [16, 20], "counts": [100, "20", 200]},
            "uncompressed RLE counts must be a list of non-negative integers",
        ),
        ({"size": [16, 20], "counts": [100, 20]}, "uncompressed RLE counts sum to 120, not height*width = 320"),
        ({"size": [16, 20], "counts": [400, -80]}, "uncompressed RLE counts must be non-negative"),
        ({"size": [16, 20], "counts": "garbage!!"}, "character 'r' at position 2 is not in the RLE alphabet"),
        (
            {"size": [16, 20], "counts": ";4"},
            "compressed RLE counts string cannot be decoded: its runs sum to 15 pixels",
        ),
        (
            {"size": [16, 20], "counts": "PPPP"},
            "compressed RLE counts string cannot be decoded: it ends inside a number",
        ),
        ({"size": [16, 20], "counts": ""}, "compressed RLE counts string is empty"),
        (
            {"size": [1000000, 1000000], "counts": [10**12]},
            "RLE size [1000000, 1000000] does not match image size [16, 20]",
        ),
        (
            [[0, 0, 1e8, 0, 1e8, 1e8, 0, 1e8]],
            "polygon coordinates reach far outside the 20x16 image (x from 0 to 1e+08",
        ),
        (
            [[0, 0, 20, 16] * 1000],
            "polygon outline is 4e+04 px long (2000 points), more than 100 perimeters of the 20x16",
        ),
    ],
)
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
    ds = make(
        tmp_path,
        annotations=[
            ann(1, SQUARE, bbox=[2, 2, 10, 8]),
            ann(2, SQUARE, bbox=[2, 2, 1e9, 8]),
            ann(3, SQUARE, bbox=["2", 2, 10, 8]),
            ann(4, SQUARE, bbox=None),
        ],
    )
    assert ds.skipped == []  # training takes the box from the mask, as the fit report does
    assert len(ds[0][1]["labels"]) == 4


def test_validation_split_rejects_what_coco_evaluation_cannot_read(tmp_path):
    """COCO evaluation reads the val json itself: NaN polygons make faster-coco-eval throw
    std::bad_alloc and pycocotools segfault, flat polygons and garbage RLE raise; skipping them in
    the loader would leave the crash for the end of the first epoch."""
    bad = [
        ann(2, [2, 2, 12, 2, 12, 10], bbox=[2, 2, 10, 8], area=80),
        ann(3, {"size": [16, 20], "counts": "garbage!!"}, bbox=[2, 2, 10, 8], area=80),
    ]
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
    with pytest.raises(
        DatasetError, match=r"ann\.json: annotation id 1 \(image id 1\) has area '80'; COCO evaluation needs a number"
    ):
        make(tmp_path, annotations=[ann(1, SQUARE, bbox=[2, 2, 10, 8], area="80")], for_evaluation=True)


def test_few_surviving_annotations_warn_loudly(tmp_path, caplog):
    anns = [ann(1, SQUARE)] + [ann(i, [[1, 1, 5, 5]]) for i in range(2, 202)]
    with caplog.at_level(logging.WARNING, logger="maskrcnn.data.coco"):
        make(tmp_path, annotations=anns, skipped_log=tmp_path / "skipped_train.jsonl")
    assert "only 1 of 201 annotations (0.50%) passed the checks" in caplog.text
    assert str(tmp_path / "skipped_train.jsonl") in caplog.text
