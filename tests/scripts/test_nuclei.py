"""The generated microscopy stand-in ("nuclei"): the statistics the training comparison relies on."""

import json

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from bench import datasets
from bench.nuclei import TRAIN_IMAGES, VAL_IMAGES, generate_nuclei
from maskrcnn.data.coco import CocoInstanceDataset


def _training_scale(img: dict, short: int = 384, long: int = 640) -> float:
    return min(short / min(img["width"], img["height"]), long / max(img["width"], img["height"]))


def test_nuclei_statistics_match_the_described_set(tmp_path):
    paths = generate_nuclei(tmp_path / "nuclei", seed=0)
    coco = json.loads(open(paths["train"]["annotation_file"]).read())
    images = {img["id"]: img for img in coco["images"]}
    assert 12 <= len(images) <= 20 and len(json.loads(open(paths["val"]["annotation_file"]).read())["images"]) >= 3
    sides = {(img["width"], img["height"]) for img in images.values()}
    assert min(min(s) for s in sides) == 256 and max(max(s) for s in sides) <= 700
    assert sum(img["height"] > img["width"] for img in images.values()) == 2  # 2 portrait of 12
    assert sum(img["height"] == img["width"] == 256 for img in images.values()) >= 2
    per_image = np.bincount([a["image_id"] for a in coco["annotations"]])[1:]
    assert per_image.min() >= 20 and per_image.max() <= 150
    side = np.array([max(a["bbox"][2:]) for a in coco["annotations"]])
    assert side.min() >= 2.0 and side.max() <= 96 and 18 <= np.median(side) <= 30
    at_scale = side * np.array([_training_scale(images[a["image_id"]]) for a in coco["annotations"]])
    assert 0.12 <= np.mean(at_scale < 16) <= 0.3  # about 20 % below 16 px at shortest edge 384
    first = coco["images"][0]
    assert Image.open(f"{paths['train']['image_dir']}/{first['file_name']}").mode == "RGBA"


def test_nuclei_masks_are_compressed_rle_with_a_polygon_twin(tmp_path):
    rle_paths = generate_nuclei(tmp_path / "nuclei", seed=1)
    poly_paths = generate_nuclei(tmp_path / "nuclei", seed=1, polygons=True)
    assert rle_paths["train"]["image_dir"] == poly_paths["train"]["image_dir"]  # same images
    rle = json.loads(open(rle_paths["train"]["annotation_file"]).read())["annotations"]
    poly = json.loads(open(poly_paths["train"]["annotation_file"]).read())["annotations"]
    assert len(rle) == len(poly) and all(isinstance(a["segmentation"]["counts"], str) for a in rle)
    assert all(isinstance(a["segmentation"], list) for a in poly)
    # The RLE is the polygon rasterised; bbox and area are those of the stored mask.
    a, p = rle[5], poly[5]
    h, w = a["segmentation"]["size"]
    decoded = mask_utils.decode({"size": [h, w], "counts": a["segmentation"]["counts"].encode()})
    assert decoded.sum() == a["area"]
    assert np.array_equal(decoded, mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(p["segmentation"], h, w))))
    ys, xs = np.nonzero(decoded)
    assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    # Some nuclei overlap (per-instance masks may share pixels), and our loader reads the set.
    _, target = CocoInstanceDataset(**rle_paths["train"])[3]
    assert target["masks"].shape[1:] == (TRAIN_IMAGES[3].height, TRAIN_IMAGES[3].width)
    overlapping = sum(int(CocoInstanceDataset(**rle_paths["train"])[i][1]["masks"].sum(0).max() > 1) for i in range(4))
    assert overlapping >= 1


def test_nuclei_generation_is_deterministic_and_idempotent(tmp_path):
    first = generate_nuclei(tmp_path / "a", seed=2)
    second = generate_nuclei(tmp_path / "b", seed=2)
    for split in ("train", "val"):
        assert open(first[split]["annotation_file"]).read() == open(second[split]["annotation_file"]).read()
    before = (tmp_path / "a" / "train" / "0000.png").stat().st_mtime_ns
    assert generate_nuclei(tmp_path / "a", seed=2) == first
    assert (tmp_path / "a" / "train" / "0000.png").stat().st_mtime_ns == before
    other = generate_nuclei(tmp_path / "c", seed=3)
    assert open(other["train"]["annotation_file"]).read() != open(first["train"]["annotation_file"]).read()
    assert len(VAL_IMAGES) >= 3


def test_benchmark_prepares_both_nuclei_variants(tmp_path):
    rle, k = datasets.prepare("nuclei", tmp_path)
    poly, _ = datasets.prepare("nuclei_poly", tmp_path)
    assert k == 1 and rle["train"]["annotation_file"].endswith("annotations.json")
    assert poly["train"]["annotation_file"].endswith("annotations_poly.json")
