"""Property: whatever a COCO json holds, setup either rejects it with a DatasetError naming the file,
or every item of the dataset loads (with and without the training transforms).

Hypothesis mutates a valid file 1-3 times: values replaced by other JSON types (null, bools,
strings of numbers, nested lists, objects), extreme numbers (NaN, inf, 1e300, 2**70, negatives),
keys deleted, list elements duplicated or removed, lists emptied, values wrapped in or unwrapped from
a list. "Setup" is what the data module does: build the dataset (json check), then check the image
files and drop the unreadable ones. The default run is deterministic and takes seconds; a longer
one runs with ``-m slow``.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from maskrcnn.data.coco import CocoInstanceDataset
from maskrcnn.data.transforms import build_transforms
from maskrcnn.errors import DatasetError

SIZES = {1: (24, 18), 2: (16, 20)}  # image id -> (width, height)


def _valid_coco() -> dict:
    """Two images, two categories; polygons (one with two parts), compressed and uncompressed RLE,
    a crowd region, bbox and area everywhere (so validation splits accept it too)."""
    mask = np.zeros((20, 16), np.uint8)
    mask[3:9, 4:12] = 1
    compressed = mask_utils.encode(np.asfortranarray(mask))["counts"].decode("ascii")
    flat = mask.ravel(order="F")
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]])))
    uncompressed = np.diff(np.concatenate([[0], changes])).tolist()
    uncompressed[-1] = flat.size - sum(uncompressed[:-1])

    def ann(id_, image_id, category_id, segmentation, bbox, iscrowd=0):
        return {
            "id": id_,
            "image_id": image_id,
            "category_id": category_id,
            "segmentation": segmentation,
            "bbox": bbox,
            "area": float(bbox[2] * bbox[3]),
            "iscrowd": iscrowd,
        }

    return {
        "images": [{"id": i, "file_name": f"{i}.png", "width": w, "height": h} for i, (w, h) in SIZES.items()],
        "categories": [{"id": 1, "name": "nut"}, {"id": 3, "name": "bolt"}],
        "annotations": [
            ann(1, 1, 1, [[2, 2, 12, 2, 12, 10, 2, 10]], [2, 2, 10, 8]),
            ann(2, 1, 3, [[14.5, 3, 22, 3, 18.25, 15.5], [1, 12, 5, 12, 5, 16]], [1, 3, 21, 13]),
            ann(3, 2, 3, {"size": [20, 16], "counts": compressed}, [4, 3, 8, 6]),
            ann(4, 2, 1, {"size": [20, 16], "counts": uncompressed}, [4, 3, 8, 6], iscrowd=1),
            ann(5, 2, 1, [[0, 12, 16, 12, 16, 20, 0, 20]], [0, 12, 16, 8]),
        ],
    }


VALID = _valid_coco()

# Replacement values: other JSON types, numbers as strings, extremes, broken RLE strings, nestings.
VALUES = st.one_of(
    st.sampled_from(
        [
            None,
            True,
            False,
            0,
            1,
            -1,
            2,
            3.0,
            0.5,
            -7.5,
            1e300,
            -1e300,
            10**6,
            2**70,
            -(2**70),
            math.nan,
            math.inf,
            -math.inf,
            "",
            "3",
            "1",
            "0",
            "img1",
            "garbage!!",
            ";4",
            "PPPP",
            "0",
            [],
            {},
            [[]],
            [1, 2],
            [[1, 2], [3, 4], [5, 6]],
            [2, 2, 12, 2, 12, 10],
            [[0, 0, 1e8, 0, 1e8, 1e8]],
            {"size": [20, 16]},
            {"size": [20, 16], "counts": [320]},
            {"counts": "abc", "size": "20x16"},
            [1e6, 1e6, 1e6, 1e6],
        ]
    ),
    st.integers(-(2**65), 2**65),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.lists(st.one_of(st.integers(-30, 60), st.floats(-30, 60)), max_size=9),
)


def _children(node) -> list:
    if isinstance(node, dict):
        return sorted(node, key=str)
    if isinstance(node, list):
        return list(range(len(node)))
    return []


@st.composite
def mutated_coco(draw) -> dict:
    doc = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        # Walk down from the root (or, to reach the geometry more often, from an annotation or its
        # segmentation), stopping at any depth; mutate the child reached.
        parent, key, node = None, None, doc
        start = draw(st.sampled_from(["root", "image", "annotation", "segmentation", "segmentation"]))
        items = doc.get("images" if start == "image" else "annotations")
        if start != "root" and isinstance(items, list) and items:
            node = items[draw(st.integers(0, len(items) - 1))]
            if start == "segmentation" and isinstance(node, dict) and _children(node.get("segmentation")):
                node = node["segmentation"]
        while _children(node) and (parent is None or draw(st.integers(0, 3)) > 0):
            parent, key = node, draw(st.sampled_from(_children(node)))
            node = node[key]
        if parent is None:
            continue
        op = draw(
            st.sampled_from(
                [
                    "replace",
                    "replace",
                    "replace",
                    "stringify",
                    "delete",
                    "duplicate",
                    "wrap",
                    "unwrap",
                    "scale",
                    "empty",
                ]
            )
        )
        value = parent[key]
        if op == "replace":
            parent[key] = draw(VALUES)
        elif op == "stringify":
            parent[key] = value if isinstance(value, str) else json.dumps(value)
        elif op == "delete":
            del parent[key]
        elif op == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(value))
        elif op == "wrap":
            parent[key] = [value]
        elif op == "unwrap" and isinstance(value, list) and value:
            parent[key] = value[0]
        elif op == "scale" and type(value) in (int, float):
            parent[key] = value * draw(st.sampled_from([-1, 0, 1e6, 1e-6, 2**40]))
        elif op == "empty" and isinstance(value, (list, dict)):
            parent[key] = type(value)()
    return doc


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("property")
    rng = np.random.default_rng(0)
    for image_id, (w, h) in SIZES.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"{image_id}.png")
    return root


TRAIN = build_transforms("default", True, min_size=12, max_size=30)


def _check_item(item, dataset: CocoInstanceDataset) -> None:
    image, target = item
    assert image.dtype == torch.float32 and image.ndim == 3 and image.shape[0] == 3
    n, (h, w) = len(target["labels"]), image.shape[1:]
    assert target["boxes"].shape == (n, 4) and target["masks"].shape == (n, h, w)
    assert target["labels"].dtype == torch.int64 and all(
        1 <= int(v) <= dataset.num_categories for v in target["labels"]
    )
    assert torch.isfinite(target["boxes"]).all() and type(target["image_id"]) is int


def _setup_then_load_everything(image_dir, doc: dict, for_evaluation: bool) -> None:
    ann_file = image_dir / "mutated.json"
    ann_file.write_text(json.dumps(doc, allow_nan=True))
    try:
        dataset = CocoInstanceDataset(image_dir, ann_file, for_evaluation=for_evaluation)
    except DatasetError as exc:
        assert str(ann_file) in str(exc), str(exc)  # the message names the file
        event("rejected")
        return
    bad = dataset.check_images(full_decode=True)  # what the data module does in setup
    assert all(str(image_dir) in b["reason"] for b in bad)  # a mutated file_name or size: names the file
    dataset.exclude_images(bad)
    event(
        f"loaded, {'some' if dataset.skipped else 'no'} annotations skipped, {'some' if bad else 'no'} images excluded"
    )
    for transforms in (None, TRAIN):
        dataset.transforms = transforms
        for i in range(len(dataset)):
            _check_item(dataset[i], dataset)


FAST = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def test_the_valid_file_loads(image_dir):
    ann_file = image_dir / "valid.json"
    ann_file.write_text(json.dumps(VALID))
    dataset = CocoInstanceDataset(image_dir, ann_file, for_evaluation=True)
    assert dataset.skipped == [] and dataset.num_instances() == 4
    assert [len(dataset[i][1]["labels"]) for i in range(2)] == [2, 2]  # the crowd region is not an instance


@FAST
@given(doc=mutated_coco(), for_evaluation=st.sampled_from([False, False, True]))
def test_mutated_coco_is_rejected_clearly_or_loads(image_dir, doc, for_evaluation):
    _setup_then_load_everything(image_dir, doc, for_evaluation)


@pytest.mark.slow
@settings(FAST, max_examples=3000)
@given(doc=mutated_coco(), for_evaluation=st.sampled_from([False, False, True]))
def test_mutated_coco_is_rejected_clearly_or_loads_long(image_dir, doc, for_evaluation):
    _setup_then_load_everything(image_dir, doc, for_evaluation)
