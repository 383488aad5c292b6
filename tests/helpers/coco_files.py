"""Small COCO files written by tests: one 20x16 image with one square by default."""

import json

from PIL import Image

from maskrcnn.data.coco import CocoInstanceDataset

IMG = {"id": 1, "file_name": "a.png", "width": 20, "height": 16}  # the default image of write_coco
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
    """One non-crowd annotation dict."""
    return {
        "id": id_,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": segmentation,
        "iscrowd": 0,
        **extra,
    }


def split_folder(root, name, annotations, categories=None, images=2):
    """``root/name`` with ``images`` 40x32 PNGs and ``ann.json``; returns the split spec of the data module."""
    folder = root / name
    folder.mkdir()
    imgs = [{"id": i, "file_name": f"{i}.png", "width": 40, "height": 32} for i in range(1, images + 1)]
    for img in imgs:
        Image.new("RGB", (40, 32), (90, 20, 30)).save(folder / img["file_name"])
    cats = categories or [{"id": 1, "name": "thing"}]
    (folder / "ann.json").write_text(json.dumps({"images": imgs, "annotations": annotations, "categories": cats}))
    return {"image_dir": str(folder), "annotation_file": str(folder / "ann.json")}


def small_datamodule(
    tmp_path, train_annotations, val_annotations=None, train_categories=None, val_categories=None, **kwargs
):
    """A CocoDataModule over two ``split_folder`` splits (val: one square by default), no workers."""
    from maskrcnn.data.datamodule import CocoDataModule

    val_annotations = [ann(1, SQUARE, bbox=[2, 2, 10, 8], area=80)] if val_annotations is None else val_annotations
    options = {
        "num_workers": 0,
        "augmentation": {"name": "default", "min_size": 32, "max_size": 64},
        "skipped_log_dir": str(tmp_path / "run"),
        **kwargs,
    }
    return CocoDataModule(
        train=split_folder(tmp_path, "train", train_annotations, train_categories),
        val=split_folder(tmp_path, "val", val_annotations, val_categories),
        **options,
    )
