"""`copy_paste=simple`: pasted instances carry correct masks and boxes, covered target pixels leave
the target's masks and boxes, crowd regions are never pasted, and an item is a function of its
(data seed, epoch, index) alone, with every augmentation option and through training."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from helpers.config import TINY, compose
from maskrcnn.data.coco import CocoInstanceDataset
from maskrcnn.data.copy_paste import CopyPaste, Instances
from maskrcnn.data.readers.masks import masks_to_boxes
from maskrcnn.data.transforms import AUGMENTATIONS, build_transforms
from maskrcnn.errors import ConfigError
from maskrcnn.training.pipeline import train


def _box_mask(h: int, w: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def _items() -> tuple[Instances, Instances]:
    """A 40x50 target with two instances and one crowd region; a 20x30 source with two instances."""
    target = Instances(
        image=np.full((40, 50, 3), 10, np.uint8),
        masks=np.stack([_box_mask(40, 50, 0, 0, 10, 10), _box_mask(40, 50, 20, 20, 40, 50)]),
        labels=np.array([1, 2]),
        crowd_masks=_box_mask(40, 50, 0, 30, 40, 50)[None],
    )
    src_image = np.zeros((20, 30, 3), np.uint8)
    src_image[..., 0] = np.arange(30, dtype=np.uint8)[None] + 100  # each column its own colour
    src_image[..., 1] = np.arange(20, dtype=np.uint8)[:, None] + 100
    source = Instances(
        image=src_image,
        masks=np.stack([_box_mask(20, 30, 2, 3, 8, 9), _box_mask(20, 30, 10, 10, 20, 30)]),
        labels=np.array([3, 4]),
        crowd_masks=np.zeros((0, 20, 30), np.uint8),
    )
    return target, source


@pytest.mark.parametrize("seed", range(20))
def test_pasted_instances_and_covered_targets_at_scale_one(seed: int) -> None:
    target, source = _items()
    out = CopyPaste(prob=1.0, scale_range=(1.0, 1.0)).paste(target, source, np.random.default_rng(seed))
    pasted = out.masks[2:]
    assert 1 <= len(pasted) <= 2 and set(out.labels[2:]) <= {3, 4} and list(out.labels[:2]) == [1, 2]
    cover = pasted.any(axis=0)
    # the source lies wholly inside the target at scale 1: find its offset from the pasted colours
    ys, xs = np.nonzero(cover)
    top = int(ys[0]) - (int(out.image[ys[0], xs[0], 1]) - 100)
    left = int(xs[0]) - (int(out.image[ys[0], xs[0], 0]) - 100)
    for mask, label in zip(pasted, out.labels[2:], strict=True):  # the source's mask, moved
        expected = np.zeros((40, 50), np.uint8)
        expected[top : top + 20, left : left + 30] = source.masks[int(label) - 3]
        np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(out.image[cover], source.image[ys - top, xs - left])
    np.testing.assert_array_equal(out.image[~cover], target.image[~cover])
    # covered pixels leave every target mask, crowd regions included; the rest stays
    for before, after in ((target.masks, out.masks[:2]), (target.crowd_masks, out.crowd_masks)):
        np.testing.assert_array_equal(after, before * (~cover))


def test_scale_jitter_resizes_the_pasted_instances() -> None:
    target, source = _items()
    out = CopyPaste(prob=1.0, max_instances=1, scale_range=(2.0, 2.0)).paste(target, source, np.random.default_rng(3))
    label = int(out.labels[2])
    area = int(out.masks[2].sum())
    full = int(source.masks[label - 3].sum()) * 4  # twice the side: four times the area
    assert 0 < area <= full  # part of a 40x60 source may fall outside the 40x50 target
    if label == 3:  # the small instance lies wholly inside at any offset of a 40x60 source
        assert area == full


def test_a_fully_covered_target_instance_is_dropped_and_boxes_follow_the_masks(tmp_path) -> None:
    """Through the dataset: a source covering the whole target hides its instance; the box of a
    partly covered instance shrinks to what stays visible."""
    image_a = {"id": 1, "file_name": "a.png", "width": 40, "height": 40}
    image_b = {"id": 2, "file_name": "b.png", "width": 40, "height": 40}
    Image.new("RGB", (40, 40), (10, 10, 10)).save(tmp_path / "a.png")
    Image.new("RGB", (40, 40), (200, 0, 0)).save(tmp_path / "b.png")

    def square(i, image_id, x0, y0, x1, y1, crowd=0):
        poly = [[x0, y0, x1, y0, x1, y1, x0, y1]]
        return {"id": i, "image_id": image_id, "category_id": 1, "segmentation": poly, "iscrowd": crowd}

    anns = [
        square(1, 1, 2, 2, 10, 10),  # covered by the pasted square below
        square(2, 1, 14, 2, 30, 10),  # half covered
        square(3, 2, 0, 0, 22, 12),  # the source's instance
        square(4, 2, 30, 30, 40, 40, crowd=1),  # the source's crowd region: never pasted
    ]
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(
        json.dumps({"images": [image_a, image_b], "annotations": anns, "categories": [{"id": 1, "name": "x"}]})
    )
    paste = CopyPaste(prob=1.0, scale_range=(1.0, 1.0))
    dataset = CocoInstanceDataset(tmp_path, ann_file, transforms=build_transforms("none", True), copy_paste=paste)
    for epoch in range(5):
        image, target = dataset[(0, epoch, 0)]
        assert torch.equal(target["labels"], torch.tensor([1, 1]))  # the covered one left, one pasted
        masks = target["masks"].numpy()
        torch.testing.assert_close(target["boxes"], torch.from_numpy(masks_to_boxes(masks)), rtol=0, atol=0)
        pasted = masks[1].astype(bool)
        assert pasted.sum() == 22 * 12  # the whole instance, at scale 1 and offset 0 (40x40 onto 40x40)
        assert (image[0][torch.from_numpy(pasted)] > 0.7).all()  # red where pasted
        assert int((image[0] > 0.7).sum()) == 22 * 12  # and nowhere else: no crowd pixel came along
        torch.testing.assert_close(target["boxes"][0], torch.tensor([22.0, 2.0, 30.0, 10.0]))


def test_items_depend_on_seed_epoch_and_index_alone(tmp_path) -> None:
    """Through a real data module with every augmentation option, and in DDP's rank split."""
    from helpers.coco_files import SQUARE, ann, small_datamodule

    annotations = [ann(i, SQUARE, image_id=1 + i % 2) for i in range(1, 5)]
    for name in AUGMENTATIONS:
        if name == "lsj":
            augmentation = {"name": name, "lsj_size": 48}
        elif name == "tiles":
            augmentation = {"name": name, "tile_size": 24}
        else:
            augmentation = {"name": name, "min_size": 32, "max_size": 64}
        (tmp_path / name).mkdir()
        datamodule = small_datamodule(
            tmp_path / name, annotations, augmentation=augmentation, copy_paste={"prob": 1.0, "max_instances": 2}
        )
        datamodule.setup("fit")
        dataset = datamodule.train_dataset
        for key in ((0, 0), (1, 3)):
            image, target = dataset[key]
            again_image, again_target = dataset[key]
            assert torch.equal(image, again_image) and torch.equal(target["masks"], again_target["masks"])
            torch.testing.assert_close(target["boxes"], torch.from_numpy(masks_to_boxes(target["masks"].numpy())))
            assert len(target["labels"]) == len(target["masks"]) == len(target["boxes"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prob": 1.5}, "copy_paste.prob must be in"),
        ({"prob": 0.5, "scale_range": [2.0, 1.0]}, "copy_paste.scale_range"),
        ({"prob": 0.5, "max_instances": 0}, "copy_paste.max_instances"),
        ({"prob": 0.5, "blend": True}, "copy_paste: "),
    ],
)
def test_bad_options_are_one_config_error(tmp_path, options, message) -> None:
    from helpers.coco_files import SQUARE, ann, small_datamodule

    with pytest.raises(ConfigError, match=message):
        small_datamodule(tmp_path, [ann(1, SQUARE)], copy_paste=options)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_training_with_copy_paste_sees_pasted_instances_and_is_reproducible(shapes_dir, tmp_path) -> None:
    """A few real steps with copy_paste=simple: batches hold more instances than the files do, and
    the same seed gives the same batches with 0 or 2 workers."""
    overrides = [*TINY, "augmentation=multiscale", "copy_paste=simple", "data.check_images=none"]

    def first_epoch(*extra: str) -> list[tuple[torch.Tensor, ...]]:
        cfg = compose([*overrides, *extra], output_dir=tmp_path / "run", data_dir=shapes_dir)
        datamodule = instantiate(cfg.data, _convert_="all")
        datamodule.prepare_data()
        loader = datamodule.train_dataloader()
        loader.batch_sampler.sampler.set_epoch(0)
        return [
            (torch.cat([i.flatten() for i in images]), torch.cat([t["labels"] for t in targets]))
            for images, targets in loader
        ]

    single, workers = first_epoch(), first_epoch("data.num_workers=2")
    assert len(single) == len(workers)
    for (img_a, lab_a), (img_b, lab_b) in zip(single, workers, strict=True):
        assert torch.equal(img_a, img_b) and torch.equal(lab_a, lab_b)
    plain = first_epoch("copy_paste=none")
    assert sum(len(lab) for _, lab in single) > sum(len(lab) for _, lab in plain)

    cfg = compose(
        [*overrides, "trainer.max_steps=3", "trainer.limit_val_batches=2", "logger=none", "dataset_report=false"],
        output_dir=tmp_path / "train",
        data_dir=shapes_dir,
    )
    metrics, _ = train(cfg)
    assert np.isfinite(float(metrics["train/loss"])) and "val/segm_AP" in metrics
    assert (
        "augmentation multiscale + copy-paste p 0.5, scale [0.5, 1.5])"
        in (tmp_path / "train" / "run_summary.txt").read_text()
    )


@pytest.mark.parametrize(
    ("key", "bad"),
    [("prob", 1.5), ("prob", True), ("max_instances", 0), ("scale_range", [2.0, 1.0]), ("attempts", 0.5)],
)
def test_direct_construction_and_the_config_check_say_the_same(tmp_path, key, bad) -> None:
    """One rule table (COPY_PASTE_RULES) for CopyPaste(...) and for the config check of copy_paste.<key>."""
    from maskrcnn.data.copy_paste import COPY_PASTE_RULES
    from maskrcnn.training.config_types import check_config_types

    what = COPY_PASTE_RULES[key][0]
    value = tuple(bad) if key == "scale_range" else bad
    with pytest.raises(ValueError, match=re.escape(f"copy_paste.{key} must be {what}")):
        CopyPaste(**{**({"prob": 0.5} if key != "prob" else {}), key: value})
    cfg = compose(["copy_paste=simple", f"copy_paste.{key}={bad}".replace(" ", "")], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=re.escape(f"copy_paste.{key}=") + ".*" + re.escape(f"must be {what}")):
        check_config_types(cfg)
