"""Data pipeline: shapes generator, COCO dataset on the nuts set, transforms, sampler, datamodule."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DistributedSampler

from maskrcnn.data.coco import CocoInstanceDataset, masks_to_boxes
from maskrcnn.data.collate import collate
from maskrcnn.data.datamodule import CocoDataModule
from maskrcnn.data.draw import draw_instances
from maskrcnn.data.sampler import GroupedBatchSampler, InferenceSampler, aspect_ratio_group_ids
from maskrcnn.data.shapes import generate_shapes
from maskrcnn.data.transforms import AUGMENTATIONS, build_transforms

NUTS = Path(__file__).resolve().parents[1] / "assets" / "nuts"


# ---------------------------------------------------------------- shapes generator
def test_shapes_deterministic_valid_and_idempotent(tmp_path):
    start = time.perf_counter()
    a = generate_shapes(tmp_path / "a", num_train=20, num_val=5, image_size=96, seed=3)
    assert time.perf_counter() - start < 5
    b = generate_shapes(tmp_path / "b", num_train=20, num_val=5, image_size=96, seed=3)
    c = generate_shapes(tmp_path / "c", num_train=20, num_val=5, image_size=96, seed=4)
    ann_a, ann_b, ann_c = (json.loads(Path(p["train"]["annotation_file"]).read_text()) for p in (a, b, c))
    assert ann_a == ann_b and ann_a != ann_c
    assert (Path(a["train"]["image_dir"]) / "000007.png").read_bytes() == (
        Path(b["train"]["image_dir"]) / "000007.png"
    ).read_bytes()

    # idempotent: same params -> nothing rewritten; different params -> regenerated
    ann_file = Path(a["train"]["annotation_file"])
    mtime = ann_file.stat().st_mtime_ns
    generate_shapes(tmp_path / "a", num_train=20, num_val=5, image_size=96, seed=3)
    assert ann_file.stat().st_mtime_ns == mtime
    generate_shapes(tmp_path / "a", num_train=21, num_val=5, image_size=96, seed=3)
    assert len(json.loads(ann_file.read_text())["images"]) == 21

    assert [c["name"] for c in ann_a["categories"]] == ["square", "circle", "triangle"]
    per_image = np.bincount([x["image_id"] for x in ann_a["annotations"]], minlength=21)[1:]
    assert per_image.min() >= 1 and per_image.max() <= 4
    for ann in ann_a["annotations"]:
        n_points = len(ann["segmentation"][0]) // 2
        assert n_points == {1: 4, 2: n_points, 3: 3}[ann["category_id"]]
        if ann["category_id"] == 2:
            assert 24 <= n_points <= 32
    ds = CocoInstanceDataset(a["train"]["image_dir"], a["train"]["annotation_file"])
    assert ds.skipped == [] and len(ds) == 21  # regenerated above with 21
    image, target = ds[0]
    assert image.shape == (3, 96, 96)
    # the drawn shape colour fills its mask: pixels inside differ from the background corner
    for mask in target["masks"].bool():
        inside = image[:, mask].mean(dim=1)
        assert (inside - image[:, 0, 0]).abs().sum() > 0.3


# ---------------------------------------------------------------- nuts (real photos)
@pytest.fixture(scope="module")
def nuts():
    return CocoInstanceDataset(NUTS / "images", NUTS / "annotations.json")


def test_nuts_dataset_targets(nuts):
    assert len(nuts) == 18
    assert nuts.num_instances() + sum(s["annotation_id"] is not None for s in nuts.skipped) == 165
    assert nuts.class_names == ["__background__", "date", "fig", "hazelnut"]
    assert nuts.label_to_category_id == {1: 1, 2: 2, 3: 3}
    raw = json.loads((NUTS / "annotations.json").read_text())
    coco_boxes = {a["id"]: a["bbox"] for a in raw["annotations"]}
    total = 0
    for i in range(0, 18, 6):
        image, t = nuts[i]
        n = len(t["labels"])
        total += n
        assert image.dtype == torch.float32 and image.shape == (3, 600, 800) and 0 <= image.min() and image.max() <= 1
        assert t["orig_size"] == (600, 800) and t["image_id"] == nuts.images[i]["id"]
        assert t["boxes"].shape == (n, 4) and t["boxes"].dtype == torch.float32
        assert t["labels"].dtype == torch.int64 and set(t["labels"].tolist()) <= {1, 2, 3}
        assert t["masks"].shape == (n, 600, 800) and t["masks"].dtype == torch.uint8
        assert t["crowd_boxes"].shape == (0, 4)
        assert torch.equal(t["boxes"], torch.from_numpy(masks_to_boxes(t["masks"].numpy())))
        # the rasterised masks agree with the json boxes to within ~2 px
        ids = [a["id"] for a in raw["annotations"] if a["image_id"] == t["image_id"]]
        json_xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (coco_boxes[k] for k in ids)])
        assert torch.allclose(t["boxes"], json_xyxy, atol=2.5)
    assert total > 0
    assert nuts.check_images() == []


def test_transformed_nuts_stay_consistent(nuts):
    nuts_aug = CocoInstanceDataset(
        NUTS / "images", NUTS / "annotations.json", transforms=build_transforms("lsj", True, lsj_size=256)
    )
    torch.manual_seed(0)
    for i in (0, 1):
        image, t = nuts_aug[i]
        assert image.shape == (3, 256, 256) and t["masks"].shape[1:] == (256, 256)
        assert len(t["boxes"]) == len(t["labels"]) == len(t["masks"])
        assert t["masks"].flatten(1).any(1).all()  # no empty instance survives
        assert torch.equal(t["boxes"], torch.from_numpy(masks_to_boxes(t["masks"].numpy())))
        assert t["orig_size"] == (600, 800)


# ---------------------------------------------------------------- transforms
def _toy(h=40, w=60):
    image = np.zeros((h, w, 3), np.uint8)
    masks = np.zeros((2, h, w), np.uint8)
    masks[0, 5:15, 4:10] = 1  # rows 5..14, cols 4..9 -> box [4, 5, 10, 15]
    masks[1, 20:38, 30:58] = 1
    image[masks[0] == 1] = (255, 0, 0)
    image[masks[1] == 1] = (0, 255, 0)
    return image, masks


def test_default_transform_resizes_and_flips_in_sync():
    image, masks = _toy()
    t = build_transforms("default", train=True, min_size=80, max_size=1000, hflip_prob=1.0)
    out_image, out_masks = t(image, masks)
    assert out_image.shape == (80, 120, 3) and out_masks.shape == (2, 80, 120)
    boxes = masks_to_boxes(out_masks)
    # scale 2, then mirrored: x -> 120 - x
    np.testing.assert_allclose(boxes[0], [120 - 20, 10, 120 - 8, 30])
    np.testing.assert_allclose(boxes[1], [120 - 116, 40, 120 - 60, 76])
    # edge pixels blend under linear interpolation; the bulk of each mask keeps its object colour
    assert np.array_equal(np.median(out_image[out_masks[0] == 1], axis=0), [255, 0, 0])
    assert np.array_equal(np.median(out_image[out_masks[1] == 1], axis=0), [0, 255, 0])


def test_max_size_caps_long_side_and_eval_is_identity():
    image, masks = _toy(40, 200)
    out_image, out_masks = build_transforms("default", True, min_size=80, max_size=300)(image, masks)
    assert out_image.shape[:2] == (60, 300) and out_masks.shape[1:] == (60, 300)
    for name in AUGMENTATIONS:
        assert build_transforms(name, train=False) is None
    with pytest.raises(ValueError, match="unknown augmentation"):
        build_transforms("bogus", True)


def _interior(mask):
    """Mask pixels whose 4 neighbours are also in the mask (edges blend under interpolation)."""
    m = np.pad(mask.astype(bool), 1)
    return m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]


@pytest.mark.parametrize("name", ["multiscale", "lsj", "photometric"])
def test_other_pipelines_keep_masks_with_pixels(name):
    image, masks = _toy()
    # scale range kept >= 0.9 so objects stay large enough for interior pixels to exist
    t = build_transforms(name, True, min_size=50, max_size=100, lsj_size=64, lsj_scale=(0.9, 1.5))
    for _ in range(5):
        out_image, out_masks = t(image, masks)
        assert out_masks.shape[1:] == out_image.shape[:2] and out_masks.dtype == np.uint8
        if name == "lsj":
            assert out_image.shape[:2] == (64, 64)
        if name != "photometric":  # geometry only: mask pixels keep their object colour
            assert (out_image[_interior(out_masks[0])][:, 0] > 200).all()
    empty_image, empty_masks = t(image, masks[:0])
    assert empty_masks.shape == (0, *empty_image.shape[:2])


# ---------------------------------------------------------------- collate / sampler
def test_collate_keeps_lists():
    batch = [(torch.zeros(3, 4, 5), {"image_id": 1}), (torch.zeros(3, 6, 7), {"image_id": 2})]
    images, targets = collate(batch)
    assert [i.shape[1:] for i in images] == [(4, 5), (6, 7)] and [t["image_id"] for t in targets] == [1, 2]


def test_grouped_batch_sampler_groups_by_aspect():
    ratios = [1.5, 0.5, 1.3, 0.7, 1.0, 0.6, 2.0, 0.8, 1.1]
    groups = aspect_ratio_group_ids(ratios)
    assert groups == [0, 1, 0, 1, 0, 1, 0, 1, 0]
    sampler = GroupedBatchSampler(range(9), groups, batch_size=2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 5
    assert sorted(i for b in batches for i in b) == list(range(9))
    mixed = [b for b in batches if len({groups[i] for i in b}) > 1]
    assert len(mixed) <= 1 and all(len(b) == 2 for b in batches[:-1])
    assert len(list(GroupedBatchSampler(range(9), groups, 2, drop_last=True))) == 4


@pytest.mark.parametrize("n", [10, 11, 13])
def test_ddp_split_covers_every_index(n):
    world, groups = 3, [i % 2 for i in range(n)]
    dataset = list(range(n))
    per_rank = []
    for rank in range(world):
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=1)
        sampler.set_epoch(2)
        per_rank.append(list(GroupedBatchSampler(sampler, groups, batch_size=2)))
    assert len({len(b) for b in per_rank}) == 1  # same number of steps on every rank
    assert set(i for batches in per_rank for b in batches for i in b) == set(range(n))
    # evaluation: each image exactly once, no padding, contiguous per rank
    seen = [list(InferenceSampler(dataset, world, rank)) for rank in range(world)]
    assert sum(seen, []) == list(range(n))
    assert max(map(len, seen)) - min(map(len, seen)) <= 1


# ---------------------------------------------------------------- datamodule
def test_datamodule_on_generated_shapes(tmp_path):
    dm = CocoDataModule(
        batch_size=3,
        num_workers=0,
        augmentation="default",
        min_size=64,
        max_size=100,
        skipped_log_dir=tmp_path / "logs",
        generate_shapes={
            "out_dir": str(tmp_path / "shapes"),
            "num_train": 7,
            "num_val": 5,
            "image_size": 64,
            "seed": 0,
        },
    )
    assert dm.persistent_workers is False
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_classes == 3 and dm.class_names[1:] == ["square", "circle", "triangle"]
    assert dm.label_to_category_id == {1: 1, 2: 2, 3: 3}
    assert dm.val_annotation_file.endswith("val/annotations.json")
    assert (tmp_path / "logs" / "skipped_train.jsonl").read_text() == ""
    train = dm.train_dataloader()
    assert len(train) == 3
    images, targets = next(iter(train))
    assert len(images) == 3 and all(i.shape == (3, 64, 64) for i in images)
    assert all(t["boxes"].shape[0] == t["masks"].shape[0] >= 1 for t in targets)
    val_ids = [t["image_id"] for _, ts in dm.val_dataloader() for t in ts]
    assert val_ids == [1, 2, 3, 4, 5]


def test_datamodule_ddp_split_and_lightning_reinjection(tmp_path):
    from lightning_fabric.utilities.data import _replace_dunder_methods
    from pytorch_lightning.utilities.data import _update_dataloader

    gen = {"out_dir": str(tmp_path / "s"), "num_train": 5, "num_val": 5, "image_size": 32}
    dm = CocoDataModule(batch_size=1, num_workers=0, generate_shapes=gen, min_size=32)
    dm.prepare_data()
    dm.trainer = type("FakeTrainer", (), {"world_size": 2, "global_rank": 1})()
    dm.setup("fit")
    assert list(dm.val_dataloader().sampler) == [3, 4]
    with _replace_dunder_methods(BatchSampler):  # what Lightning does to capture init args
        loader = dm.train_dataloader()
    assert len(loader) == 3  # ceil(5 / 2 ranks) padded samples, batch 1
    new_sampler = DistributedSampler(dm.train_dataset, num_replicas=2, rank=0, shuffle=False)
    replaced = _update_dataloader(loader, new_sampler)
    assert isinstance(replaced.batch_sampler, GroupedBatchSampler)
    assert replaced.batch_sampler.sampler is new_sampler and replaced.batch_sampler.tag_epoch  # init args kept
    assert [b[0] for b in replaced.batch_sampler] == [(0, 0), (2, 0), (4, 0)]  # (index, epoch) items


# ---------------------------------------------------------------- drawing
def test_draw_instances():
    image = np.full((40, 50, 3), 100, np.uint8)
    masks = np.zeros((1, 40, 50), np.uint8)
    masks[0, 10:20, 10:30] = 1
    out = draw_instances(
        image,
        torch.tensor([[10.0, 10, 30, 20]]),
        torch.from_numpy(masks),
        torch.tensor([1]),
        ["__background__", "thing"],
        scores=torch.tensor([0.9]),
    )
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out[15, 20], image[15, 20])  # tinted under the mask
    assert np.array_equal(out[35, 45], image[35, 45])  # untouched elsewhere
    assert np.array_equal(image, np.full((40, 50, 3), 100, np.uint8))  # input not modified


def test_lightning_fit_consumes_the_datamodule(tmp_path):
    import pytorch_lightning as pl

    class Probe(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def training_step(self, batch, batch_idx):
            images, targets = batch
            self.seen += [t["image_id"] for t in targets]
            return (self.weight - sum(float(i.mean()) for i in images)) ** 2

        def validation_step(self, batch, batch_idx):
            pass

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    gen = {"out_dir": str(tmp_path / "s"), "num_train": 5, "num_val": 3, "image_size": 32}
    dm = CocoDataModule(batch_size=2, num_workers=0, generate_shapes=gen, min_size=32, max_size=64)
    probe = Probe()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(probe, datamodule=dm)
    assert sorted(probe.seen) == [1, 2, 3, 4, 5]


def test_workers_get_distinct_augmentation_streams():
    from maskrcnn.data.batching import seed_worker

    class Sizes(torch.utils.data.Dataset):
        transforms = build_transforms("multiscale", True, multiscale_sizes=list(range(32, 160)), max_size=1000)

        def __len__(self):
            return 8

        def __getitem__(self, i):
            image, _ = self.transforms(np.zeros((10, 10, 3), np.uint8), np.zeros((0, 10, 10), np.uint8))
            return image.shape[0]

    loader = torch.utils.data.DataLoader(Sizes(), batch_size=None, num_workers=2, worker_init_fn=seed_worker)
    sizes = list(loader)  # worker 0 serves items 0, 2, 4, 6; worker 1 items 1, 3, 5, 7
    assert sizes[0::2] != sizes[1::2]


def test_batched_mask_resize_equals_per_mask_resize():
    """The one-call multi-channel mask resize gives exactly the per-instance result."""
    from maskrcnn.data.transforms import ResizeShortestEdge

    rng = np.random.default_rng(0)
    masks = (rng.random((5, 61, 83)) > 0.5).astype(np.uint8)
    op = ResizeShortestEdge([40], max_size=1000)
    batched = op.apply_to_masks(masks, scale=0.7)
    single = np.stack([op.apply_to_mask(m, scale=0.7) for m in masks])
    assert batched.shape == single.shape == (5, 43, 58)
    assert np.array_equal(batched, single)
    one = op.apply_to_masks(masks[:1], scale=0.7)
    assert one.shape == (1, 43, 58) and np.array_equal(one, single[:1])


# ---------------------------------------------------------------- rasterising at the output scale
def _random_polygons(rng, height, width):
    """1-2 star polygons with 0-2 decimals (COCO style); some cross or hug the image border."""
    polys = []
    for _ in range(int(rng.integers(1, 3))):
        n = int(rng.integers(3, 20))
        cx, cy = rng.uniform(-0.2 * width, 1.2 * width), rng.uniform(-0.2 * height, 1.2 * height)
        radius = rng.uniform(1, 0.5 * min(height, width))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        poly = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1).round(int(rng.integers(0, 3)))
        polys.append(poly.clip(0, (width, height)) if rng.random() < 0.3 else poly)
    return polys


def test_bbox_cropped_rasterisation_matches_whole_image_pycocotools():
    """Rasterising only a polygon's bounding box gives pycocotools' whole-image mask. The one
    exception is pycocotools' own rounding of an edge point, which depends on its absolute position
    (x + 0.5 rounds differently at x = 1000 than at x = 10): rare, and then one boundary pixel."""
    from pycocotools import mask as mask_utils

    from maskrcnn.data.readers.masks import rasterise_polygons

    rng = np.random.default_rng(0)
    differing_polygons, differing_pixels, foreground = 0, 0, 0
    for _ in range(1000):
        height, width = int(rng.integers(20, 900)), int(rng.integers(20, 900))
        polys = _random_polygons(rng, height, width)
        rles = mask_utils.frPyObjects([p.ravel().tolist() for p in polys], height, width)
        expected = mask_utils.decode(mask_utils.merge(rles))
        got = rasterise_polygons(polys, np.zeros((height, width), np.uint8))
        diff = int((got != expected).sum())
        differing_polygons += diff > 0
        differing_pixels += diff
        foreground += int(expected.sum())
        assert diff <= 2, (height, width, [p.tolist() for p in polys])
    assert foreground > 10**6  # the polygons are not trivially empty
    assert differing_polygons <= 3 and differing_pixels <= 6


def test_dataset_rasterises_at_the_resized_scale(nuts):
    """With a resize first, masks are rasterised from scaled polygons at the output size: they
    match rasterising the full-size mask then resizing it, up to boundary pixels."""
    import cv2

    from maskrcnn.data.readers.masks import decode_segmentation

    calls = []

    class Recording:
        def __init__(self):
            self.inner = build_transforms("default", True, min_size=300, max_size=1000, hflip_prob=0.0)
            self.accepts_mask_fn = True

        def __call__(self, image, masks):
            assert callable(masks)
            calls.append(image.shape[:2])
            return self.inner(image, lambda h, w: calls.append((h, w)) or masks(h, w))

    ds = CocoInstanceDataset(NUTS / "images", NUTS / "annotations.json", transforms=Recording())
    image, target = ds[0]
    assert calls == [(600, 800), (300, 400)] and image.shape == (3, 300, 400)
    raw = json.loads((NUTS / "annotations.json").read_text())
    anns = [a for a in raw["annotations"] if a["image_id"] == target["image_id"]]
    assert len(anns) == len(target["masks"]) > 0
    for ann, mask in zip(anns, target["masks"].numpy(), strict=True):
        full = decode_segmentation(ann["segmentation"], 600, 800)
        resized = cv2.resize(full, (400, 300), interpolation=cv2.INTER_NEAREST)
        assert (mask != resized).sum() <= 0.1 * resized.sum() + 10  # boundary pixels only
        assert np.array_equal(mask, decode_segmentation(ann["segmentation"], 600, 800, out_size=(300, 400)))


def test_plain_callable_transforms_still_get_arrays(nuts):
    """A user transform without ``accepts_mask_fn`` receives masks as an array at the image size."""
    seen = []

    def flip_only(image, masks):
        seen.append((type(masks), masks.shape))
        return image[:, ::-1], masks[:, :, ::-1]

    ds = CocoInstanceDataset(NUTS / "images", NUTS / "annotations.json", transforms=flip_only)
    image, target = ds[0]
    plain_image, plain = nuts[0]
    assert seen[0][0] is np.ndarray and seen[0][1][1:] == (600, 800)
    assert torch.equal(image, plain_image.flip(-1)) and torch.equal(target["masks"], plain["masks"].flip(-1))


def test_lazy_and_array_masks_draw_the_same_augmentation():
    """Passing masks as a callable only changes where they are rasterised, not the random draws."""
    image, masks = _toy()
    a = build_transforms("multiscale", True, multiscale_sizes=[50, 60, 70, 80], max_size=1000)
    b = build_transforms("multiscale", True, multiscale_sizes=[50, 60, 70, 80], max_size=1000)
    a.set_seed(3)
    b.set_seed(3)
    for _ in range(6):
        img_a, masks_a = a(image, masks)
        img_b, masks_b = b(image, lambda h, w: np.stack([_resize_nearest(m, h, w) for m in masks]))
        assert np.array_equal(img_a, img_b) and np.array_equal(masks_a, masks_b)


def _resize_nearest(mask, height, width):
    import cv2

    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
