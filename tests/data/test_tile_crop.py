"""``augmentation=tiles``: native-resolution random windows that keep cut instances consistent
(mask cropped, box from the cropped mask, remnants dropped by the area / visibility rule), rasterised
inside the window only, and seeded per (index, epoch) like every other augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.large_images import generate_large_images
from helpers.config import TINY, compose
from maskrcnn.data.coco import CocoInstanceDataset
from maskrcnn.data.readers.masks import SegmentationRaster, masks_to_boxes
from maskrcnn.data.sampler import sample_seed
from maskrcnn.data.tile_crop import TileCrop
from maskrcnn.data.transforms import build_transforms


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """6 train images of 300 x 200 (every third portrait) with 20-40 objects of 10-40 px."""
    root = tmp_path_factory.mktemp("large")
    return generate_large_images(root, num_train=6, num_val=1, image_size=(300, 200), instances_per_image=(20, 40))


def _square(size: int, x0: int, y0: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[y0 : y0 + side, x0 : x0 + side] = 1
    return mask


def test_cut_instances_keep_their_visible_part_unless_it_is_a_remnant():
    crop = TileCrop(20, min_area=16, min_visibility=0.25)
    masks = np.stack(
        [
            _square(40, 15, 0, 10),  # 5 of 10 columns visible: 50 px, half of it: kept
            _square(40, 18, 5, 10),  # 2 columns: 20 px >= 16 but 0.2 of its area: dropped
            _square(40, 2, 2, 3),  # 9 px < 16 but not cut: kept whatever its size
            _square(40, 19, 12, 4),  # 1 column: 4 px < 16: dropped
            np.ones((40, 40), dtype=np.uint8),  # larger than the tile: all of the tile visible, kept
        ]
    )
    out = crop.apply_to_masks(masks, window=(0, 0, 20, 20))
    assert out.shape == (5, 20, 20)
    assert out.reshape(5, -1).sum(1).tolist() == [50, 0, 9, 0, 400]
    assert (out[0] == masks[0][:20, :20]).all()


@settings(max_examples=30, deadline=None)
@given(x0=st.integers(0, 250), y0=st.integers(0, 150), w=st.integers(1, 80), h=st.integers(1, 80))
def test_the_window_raster_equals_the_window_of_the_full_raster(large, x0, y0, w, h):
    dataset = CocoInstanceDataset(**large["train"])
    img = dataset.images[0]
    raster = SegmentationRaster([a["segmentation"] for a in dataset._instances[img["id"]]], img["height"], img["width"])
    full = raster(img["height"], img["width"])
    x1, y1 = min(x0 + w, img["width"]), min(y0 + h, img["height"])
    window, areas = raster.window(x0, y0, x1, y1)
    assert (window == full[:, y0:y1, x0:x1]).all()
    assert areas.tolist() == full.reshape(len(full), -1).sum(1).tolist()


@settings(max_examples=20, deadline=None)
@given(index=st.integers(0, 5), epoch=st.integers(0, 50))
def test_tiles_keep_masks_boxes_and_labels_consistent(large, index, epoch):
    tiles = build_transforms("tiles", True, tile_size=96, hflip_prob=0.0)
    dataset = CocoInstanceDataset(**large["train"], transforms=tiles, seed=3)
    whole = CocoInstanceDataset(**large["train"])[index]
    image, target = dataset[(index, epoch)]
    # the window the item drew: the crop's own random stream, seeded as the dataset seeds it
    tiles.set_seed(sample_seed(3, epoch, index))
    x0, y0, x1, y1 = tiles.crop.window(*whole[0].shape[1:])
    assert image.shape == (3, 96, 96) and (x1 - x0, y1 - y0) == (96, 96)
    assert torch.equal(image, whole[0][:, y0:y1, x0:x1])  # native resolution: the file's pixels
    masks = target["masks"]
    assert len(masks) == len(target["labels"]) == len(target["boxes"])
    assert masks.flatten(1).any(1).all()  # empty remnants were dropped
    assert torch.equal(target["boxes"], torch.from_numpy(masks_to_boxes(masks.numpy())))
    # every kept mask is a whole instance's mask seen through the window
    full = whole[1]["masks"][:, y0:y1, x0:x1]
    for mask, label in zip(masks, target["labels"], strict=True):
        same = [k for k in range(len(full)) if torch.equal(full[k], mask)]
        assert same and any(whole[1]["labels"][k] == label for k in same)


def _datamodule(large, tmp_path, *extra: str):
    root = large["train"]["image_dir"].rsplit("/", 1)[0]
    # the tiles option has no resize sizes, a folder no generated shapes
    tiny = [o for o in TINY if not o.startswith(("augmentation.", "data.generate_shapes"))]
    cfg = compose(
        [*tiny, "data=folder", f"data.root={root}", "data.num_classes=2", "augmentation=tiles"]
        + ["augmentation.tile_size=64", "data.aspect_ratio_grouping=true", "data.check_images=none", *extra],
        output_dir=tmp_path / "run",
    )
    return instantiate(cfg.data, _convert_="all")


def _epoch(datamodule, epoch: int) -> list[tuple[torch.Tensor, ...]]:
    loader = datamodule.train_dataloader()
    loader.batch_sampler.sampler.set_epoch(epoch)
    return [
        (torch.tensor([t["image_id"] for t in targets]), torch.stack(images), torch.cat([t["boxes"] for t in targets]))
        for images, targets in loader
    ]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_tiles_follow_the_per_item_seeds_through_the_grouped_loader(large, tmp_path):
    datamodule = _datamodule(large, tmp_path)
    epoch0, epoch1 = _epoch(datamodule, 0), _epoch(datamodule, 1)
    assert all(images.shape[-2:] == (64, 64) for _, images, _ in epoch0)
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(epoch0, epoch1, strict=True))  # new windows
    again = _epoch(_datamodule(large, tmp_path, "data.num_workers=2"), 1)
    resumed = _datamodule(large, tmp_path)
    resumed.load_state_dict({"train_loader": {"batches_done": 1}})
    for expected, got in ((epoch1, again), (epoch1[1:], _epoch(resumed, 1))):
        assert len(expected) == len(got)
        for a, b in zip(expected, got, strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # portrait (every third) and landscape images are batched apart: one orientation per batch
    portrait = {img["id"] for img in datamodule.train_dataset.images if img["height"] > img["width"]}
    for ids, _, _ in epoch0[:-1]:  # the last batch takes the leftovers of both groups
        assert len({int(i) in portrait for i in ids}) == 1


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_run_trains_on_tiles_and_validates_sliced(shapes_dir, tmp_path):
    from maskrcnn.training.pipeline import train

    tiny = [o for o in TINY if not o.startswith("augmentation.")]  # the tiles option has no resize sizes
    cfg = compose(
        [*tiny, "augmentation=tiles", "augmentation.tile_size=48", "inference.slice.tile_size=48"]
        + ["trainer.limit_train_batches=2", "validate_after_train=false", "model.roi_heads.score_thresh=0.0"],
        output_dir=tmp_path,
        data_dir=shapes_dir,
    )
    metrics, objects = train(cfg)
    assert objects["module"].slicing.tile_size == 48
    assert "val/segm_AP" in metrics and "val/loss" not in metrics  # sliced validation: detections only
    assert "train/loss" in metrics
