"""Datasets the training comparison runs on: a train/val split of the shipped nuts photos, the
generated dense small-objects ("cells") set, the generated microscopy stand-in ("nuclei", RLE
masks; "nuclei_poly", the same with polygons) and the generated 4000x3000 photos with 10-40 px objects
("large", for tile training and sliced evaluation). All are written as COCO folders, nothing is downloaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench.cells import generate_cells
from bench.large_images import generate_large_images
from bench.nuclei import generate_nuclei

REPO = Path(__file__).resolve().parents[2]
NUTS = REPO / "tests" / "assets" / "nuts"
# 4 of the 18 photos (0.jpg, 13.jpg, 2.jpg, 7.jpg) are held out; the other 14 train.
NUTS_VAL_IDS = (1, 6, 11, 16)


def split_coco(annotation_file: str | Path, image_dir: str | Path, val_ids: set[int], out_dir: str | Path) -> dict:
    """Write ``out_dir/{train,val}/annotations.json`` splitting ``annotation_file`` by image id.

    Images are not copied: each split's ``image_dir`` is the original folder.
    Returns ``{"train": {"image_dir", "annotation_file"}, "val": {...}}``.
    """
    with open(annotation_file, encoding="utf-8") as f:
        data = json.load(f)
    unknown = set(val_ids) - {img["id"] for img in data["images"]}
    if unknown:
        raise ValueError(f"{annotation_file}: no image with id(s) {sorted(unknown)}")
    paths = {}
    for name, in_split in (("train", lambda i: i not in val_ids), ("val", lambda i: i in val_ids)):
        split_dir = Path(out_dir) / name
        split_dir.mkdir(parents=True, exist_ok=True)
        part = {
            "images": [img for img in data["images"] if in_split(img["id"])],
            "annotations": [a for a in data["annotations"] if in_split(a["image_id"])],
            "categories": data["categories"],
        }
        with open(split_dir / "annotations.json", "w", encoding="utf-8") as f:
            json.dump(part, f)
        paths[name] = {"image_dir": str(image_dir), "annotation_file": str(split_dir / "annotations.json")}
    return paths


def nuts_split(out_dir: str | Path) -> dict:
    """The nuts photos split 14 train / 4 val (``NUTS_VAL_IDS``)."""
    return split_coco(NUTS / "annotations.json", NUTS / "images", set(NUTS_VAL_IDS), out_dir)


def cells(out_dir: str | Path) -> dict:
    """The generated dense small-objects set (16 train / 6 val RGBA images, 20-150 blobs of 3-30 px)."""
    return generate_cells(Path(out_dir))


DATASETS = ("nuts", "cells", "nuclei", "nuclei_poly", "large")


def prepare(name: str, work_dir: str | Path) -> tuple[dict, int]:
    """``(splits, num_classes)`` of a named dataset (one of ``DATASETS``) under ``work_dir``."""
    if name == "nuts":
        return nuts_split(Path(work_dir) / "nuts_split"), 3
    if name == "cells":
        return cells(Path(work_dir) / "cells"), 1
    if name == "large":  # 6 + 3 photos of 4000x3000 px, 150-300 objects of 10-40 px each, 2 classes
        return generate_large_images(Path(work_dir) / "large"), 2
    if name in ("nuclei", "nuclei_poly"):  # one folder: the same images, two annotation files
        return generate_nuclei(Path(work_dir) / "nuclei", polygons=name == "nuclei_poly"), 1
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)} (or pass --train/--val)")


def remove(work_dir: str | Path) -> None:
    shutil.rmtree(work_dir, ignore_errors=True)
