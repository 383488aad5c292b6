"""The generated dense small-objects set: what the training comparison and the fit report rely on."""

import json

import numpy as np
from PIL import Image

from bench.cells import generate_cells
from maskrcnn.data.coco import CocoInstanceDataset


def test_cells_are_dense_small_non_overlapping_rgba(tmp_path):
    paths = generate_cells(tmp_path / "cells", num_train=6, num_val=1, instances_per_image=(20, 150), seed=3)
    coco = json.loads(open(paths["train"]["annotation_file"]).read())
    per_image = np.bincount([a["image_id"] for a in coco["annotations"]])[1:]
    assert per_image.min() >= 15 and per_image.max() <= 150  # a few of the attempted blobs may not fit
    sizes = np.array([np.sqrt(a["bbox"][2] * a["bbox"][3]) for a in coco["annotations"]])
    assert sizes.min() >= 2.0 and sizes.max() <= 40.0 and np.median(sizes) < 15
    orientations = {(img["width"] > img["height"]) for img in coco["images"]}
    assert orientations == {True, False}  # every 6th image is portrait
    first = coco["images"][0]
    assert Image.open(f"{paths['train']['image_dir']}/{first['file_name']}").mode == "RGBA"
    # Polygons of one image never overlap: their rasterised masks are disjoint.
    _, target = CocoInstanceDataset(**paths["train"])[0]
    assert target["masks"].sum(0).max() == 1 and len(target["boxes"]) == per_image[0]
    # Idempotent and deterministic.
    before = open(paths["train"]["annotation_file"]).read()
    assert generate_cells(tmp_path / "cells", num_train=6, num_val=1, instances_per_image=(20, 150), seed=3) == paths
    assert open(paths["train"]["annotation_file"]).read() == before
