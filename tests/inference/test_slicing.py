"""Sliced inference (``maskrcnn.inference.slicing``): the tile grid, detections shifted from tiles
into the image, objects cut by tile borders merged into one, masks at full resolution, and one tile
covering the image equal to plain inference."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torch import nn

from helpers.tiny_model import build_tiny_model
from maskrcnn.inference.slice_options import SliceOptions
from maskrcnn.inference.slicing import detect_tiles, sliced_detections, tile_grid, tile_starts
from maskrcnn.modeling.mask_rcnn import MaskRCNN
from maskrcnn.modeling.transform import ImageTransform


def test_tile_starts_keep_the_overlap_and_end_at_the_border():
    # 1000 px, tiles of 400 with 100 px overlap: a step of 300; the last tile ends at 1000.
    assert tile_starts(1000, 400, 100) == [0, 300, 600]
    # 1100 px: 0, 300, 600 leave 1000..1100 uncovered; the last tile is moved back to 700.
    assert tile_starts(1100, 400, 100) == [0, 300, 600, 700]
    assert tile_starts(400, 400, 100) == [0] and tile_starts(250, 400, 100) == [0]
    assert tile_starts(401, 400, 0) == [0, 1]


def test_tile_grid_covers_the_image_with_the_requested_overlap():
    windows = tile_grid(1000, 1100, 400, 100)
    assert windows[:5] == [
        (0, 0, 400, 400),
        (300, 0, 700, 400),
        (600, 0, 1000, 400),
        (700, 0, 1100, 400),
        (0, 300, 400, 700),
    ]
    assert len(windows) == 12 and windows[-1] == (700, 600, 1100, 1000)
    covered = np.zeros((1000, 1100), dtype=int)
    for x0, y0, x1, y1 in windows:
        assert (x1 - x0, y1 - y0) == (400, 400)
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    # neighbours share at least 100 px along each axis
    for a, b in zip(windows, windows[1:], strict=False):
        if a[1] == b[1]:
            assert a[2] - b[0] >= 100
    # a side shorter than the tile is one tile of that side
    assert tile_grid(300, 900, 400, 100) == [(0, 0, 400, 300), (300, 0, 700, 300), (500, 0, 900, 300)]


class _Features(nn.Module):
    def forward(self, tensors):
        return {"image": tensors}


class _NoProposals(nn.Module):
    def forward(self, batch, features, targets):
        return [None] * len(batch.image_sizes), None


class _BrightRectangles(nn.Module):
    """A stand-in for the RoI heads: each connected component of bright pixels (channel 0 > 0.5)
    inside the unpadded tile is one detection of class 1, its box the component's pixel extent and
    its mask all ones (the pasted mask is then exactly the rectangle)."""

    def forward(self, features, proposals, image_sizes, targets):
        out = []
        for image, (h, w) in zip(features["image"], image_sizes, strict=True):
            bright = (image[0, :h, :w] > 0.5).numpy().astype(np.uint8)
            count, _, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=4)
            boxes = [[x, y, x + bw, y + bh] for x, y, bw, bh, _ in stats[1:]]
            n = count - 1
            out.append(
                {
                    "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
                    "labels": torch.ones(n, dtype=torch.int64),
                    "scores": torch.linspace(0.9, 0.8, n) if n else torch.zeros(0),
                    "masks": torch.ones((n, 1, 14, 14)),
                }
            )
        return out, None


@pytest.fixture
def fake_net():
    transform = ImageTransform(min_size=64, max_size=64, image_mean=(0, 0, 0), image_std=(1, 1, 1))
    net = MaskRCNN(transform, _Features(), _NoProposals(), _BrightRectangles(), mask_format="rle", paste_aligned=True)
    net.roi_heads.detections_per_img = 100
    return net.eval()


def _image(height: int, width: int, *rects: tuple[int, int, int, int]) -> torch.Tensor:
    image = torch.zeros((3, height, width))
    for x0, y0, x1, y1 in rects:
        image[0, y0:y1, x0:x1] = 1.0
    return image


def _decoded(detection: dict) -> np.ndarray:
    return mask_utils.decode(detection["masks"]).transpose(2, 0, 1).astype(bool)


def test_tile_detections_are_shifted_into_image_pixels(fake_net):
    image = _image(200, 300, (210, 130, 230, 145))  # inside the tile at (172, 72) only
    parts = detect_tiles(fake_net, image, [(0, 0, 128, 128), (172, 72, 300, 200)])
    assert len(parts[0].scores) == 0
    tile = parts[1]
    assert tile.window == (172, 72, 300, 200)
    assert tile.boxes.tolist() == [[210.0, 130.0, 230.0, 145.0]]  # (38, 58, 58, 73) in the tile
    crop = tile.crops[0]
    full = np.zeros((200, 300), dtype=bool)
    full[crop.top : crop.bottom, crop.left : crop.right] = crop.mask
    expected = np.zeros((200, 300), dtype=bool)
    expected[130:145, 210:230] = True
    assert (full == expected).all()


def test_an_object_cut_by_tile_borders_becomes_one_detection_with_its_whole_mask(fake_net):
    # 200 x 200, tiles of 128 with 32 px overlap: windows start at 0 and 72 along each axis.
    # The rectangle x 60..150, y 20..40 is larger than the overlap: no tile sees it whole.
    image = _image(200, 200, (60, 20, 150, 40), (100, 150, 110, 160), (114, 150, 124, 160))
    options = SliceOptions(tile_size=128, overlap=0.25, full_image_pass=False)
    result = sliced_detections(fake_net, image, options)
    assert result.tiles == 4
    det = result.as_detection()
    boxes = sorted(map(tuple, det["boxes"].tolist()))
    # the cut rectangle is one detection; two neighbours in the overlap band stay two
    assert boxes == [(60.0, 20.0, 150.0, 40.0), (100.0, 150.0, 110.0, 160.0), (114.0, 150.0, 124.0, 160.0)]
    masks = _decoded(det)
    assert masks.shape == (3, 200, 200)
    for box, mask in zip(det["boxes"].tolist(), masks, strict=True):
        x0, y0, x1, y1 = map(int, box)
        expected = np.zeros((200, 200), dtype=bool)
        expected[y0:y1, x0:x1] = True
        assert (mask == expected).all(), box  # pasted at the right place, at full resolution
    assert det["scores"].tolist() == sorted(det["scores"].tolist(), reverse=True)


def test_the_full_image_pass_and_every_tile_of_a_large_object_merge_into_one(fake_net):
    # 256 x 256 in tiles of 128 with 32 px overlap: 3 x 3 tiles, each sees a part of the object;
    # the full-image pass (resized to 64 px, scale 1/4) sees it whole.
    image = _image(256, 256, (8, 8, 248, 248))
    options = SliceOptions(tile_size=128, overlap=0.25, full_image_pass=True)
    result = sliced_detections(fake_net, image, options)
    assert result.tiles == 9
    det = result.as_detection()
    assert det["boxes"].tolist() == [[8.0, 8.0, 248.0, 248.0]]
    mask = _decoded(det)[0]
    # the union of the tiles' masks: the rectangle (an all-ones 14 x 14 mask fades at the outer
    # corners when pasted over 240 px), nothing outside it
    assert mask[12:244, 12:244].all() and not mask[:8].any() and not mask[:, 248:].any()
    assert mask.sum() == 240 * 240 - 4 * 6


def test_one_tile_covering_the_image_equals_plain_inference():
    # The tiny model resizes to 96 / 128: a 96 x 128 image enters at scale 1 in plain inference too.
    net = build_tiny_model(score_thresh=0.0)
    net.mask_format = "rle"
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        plain = net([image])["detections"][0]
    sliced = sliced_detections(net, image, SliceOptions(tile_size=128)).as_detection()
    assert len(plain["scores"]) > 5
    assert torch.equal(sliced["boxes"], plain["boxes"])
    assert torch.equal(sliced["labels"], plain["labels"]) and torch.equal(sliced["scores"], plain["scores"])
    assert sliced["masks"] == plain["masks"]
