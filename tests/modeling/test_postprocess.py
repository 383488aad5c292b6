"""paste_masks == torchvision's paste_masks_in_image; binary / RLE outputs round-trip."""

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import paste_masks_in_image

from maskrcnn.modeling.postprocess import format_masks, masks_to_binary, masks_to_rle, paste_masks


def _boxes_overlapping_image(n: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Random boxes, many partly outside the image, all overlapping it (as clipped detections do)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([width - 5.0, height - 5.0]) - 30.0
    wh = torch.rand(n, 2, generator=g) * 0.7 * max(height, width) + 0.05
    wh = torch.maximum(wh, -xy + 1.0)  # keep every box overlapping the image
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("height,width,n,size", [(120, 160, 60, 28), (97, 61, 25, 14), (64, 64, 3, 28)])
def test_paste_equals_torchvision(height, width, n, size):
    g = torch.Generator().manual_seed(n)
    masks = torch.rand(n, 1, size, size, generator=g)
    boxes = _boxes_overlapping_image(n, height, width, seed=n)
    boxes[0] = torch.tensor([10.2, 11.7, 10.9, 12.1])  # tiny box (sub-pixel)
    boxes[1] = torch.tensor([-20.0, -15.5, width + 20.0, height + 9.0])  # larger than the image
    boxes[2] = torch.tensor([width - 1.5, height - 2.0, width - 0.5, height - 0.2])  # tiny, at the corner
    expected = paste_masks_in_image(masks, boxes, (height, width))
    for chunk in (1, 7, 1000):
        out = paste_masks(masks, boxes, (height, width), chunk_size=chunk)
        assert out.shape == (n, 1, height, width)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_paste_padding_zero_and_two():
    masks = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    boxes = _boxes_overlapping_image(8, 80, 90, seed=4)
    for padding in (0, 2):
        torch.testing.assert_close(
            paste_masks(masks, boxes, (80, 90), padding=padding),
            paste_masks_in_image(masks, boxes, (80, 90), padding=padding),
            atol=1e-5,
            rtol=0,
        )


def test_paste_many_masks_large_image():
    masks = torch.rand(150, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    boxes = _boxes_overlapping_image(150, 300, 400, seed=6)
    expected = paste_masks_in_image(masks, boxes, (300, 400))
    torch.testing.assert_close(paste_masks(masks, boxes, (300, 400), chunk_size=64), expected, atol=1e-5, rtol=0)


def test_paste_empty_and_bad_shapes():
    assert paste_masks(torch.zeros(0, 1, 28, 28), torch.zeros(0, 4), (30, 40)).shape == (0, 1, 30, 40)
    with pytest.raises(ValueError, match="masks"):
        paste_masks(torch.zeros(2, 28, 28), torch.zeros(2, 4), (30, 40))
    with pytest.raises(ValueError, match="boxes"):
        paste_masks(torch.zeros(2, 1, 28, 28), torch.zeros(3, 4), (30, 40))


def test_binary_and_rle_round_trip():
    masks = torch.rand(4, 1, 33, 47, generator=torch.Generator().manual_seed(7))
    masks[2] = 0.0  # an empty mask
    binary = masks_to_binary(masks)
    assert binary.dtype == torch.bool and torch.equal(binary, masks > 0.5)
    rles = masks_to_rle(masks)
    assert len(rles) == 4
    for rle, b in zip(rles, binary, strict=True):
        assert rle["size"] == [33, 47] and isinstance(rle["counts"], str)
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
        np.testing.assert_array_equal(decoded, b[0].numpy().astype(np.uint8))
    assert mask_utils.area(rles[2]) == 0
    # bool input is encoded as is, and an empty batch gives an empty list
    assert [r["counts"] for r in masks_to_rle(binary)] == [r["counts"] for r in rles]
    assert masks_to_rle(torch.zeros(0, 1, 5, 5)) == []


def test_format_masks():
    masks = torch.rand(2, 1, 9, 9)
    assert format_masks(masks, "prob") is masks
    assert format_masks(masks, "binary").dtype == torch.bool
    assert isinstance(format_masks(masks, "rle"), list)
    with pytest.raises(ValueError, match="mask_format"):
        format_masks(masks, "polygon")


def test_chunked_binary_and_rle_equal_thresholded_probabilities():
    """mask_format=binary/rle are produced chunk by chunk and must equal thresholding the full
    probability output (chunk boundaries included)."""
    from pycocotools import mask as mask_utils

    from maskrcnn.modeling.postprocess import paste_masks

    g = torch.Generator().manual_seed(0)
    masks = torch.rand(7, 1, 28, 28, generator=g)
    xy = torch.rand(7, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + 5 + torch.rand(7, 2, generator=g) * 30], dim=1)
    prob = paste_masks(masks, boxes, (80, 90), chunk_size=3)
    binary = paste_masks(masks, boxes, (80, 90), chunk_size=3, mask_format="binary")
    rle = paste_masks(masks, boxes, (80, 90), chunk_size=3, mask_format="rle")
    assert binary.dtype == torch.bool and torch.equal(binary, prob > 0.5)
    decoded = torch.from_numpy(mask_utils.decode(rle)).permute(2, 0, 1)[:, None].bool()
    assert torch.equal(decoded, prob > 0.5)
    assert torch.equal(prob, paste_masks(masks, boxes, (80, 90), chunk_size=64))


def _grid_sample_paste(masks: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Reference for the aligned paste: sample every image pixel centre with grid_sample (detectron2)."""
    h, w = size
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    out = []
    for mask, (x0, y0, x1, y1) in zip(masks, boxes.tolist(), strict=True):
        gy = (ys - y0) / (y1 - y0) * 2 - 1
        gx = (xs - x0) / (x1 - x0) * 2 - 1
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
        out.append(torch.nn.functional.grid_sample(mask[None], grid, align_corners=False)[0])
    return torch.stack(out)


def test_aligned_paste_samples_each_pixel_centre_exactly():
    g = torch.Generator().manual_seed(3)
    masks = torch.rand(9, 1, 28, 28, generator=g)
    xy = torch.rand(9, 2, generator=g) * 70 - 5  # some boxes cross the image border
    boxes = torch.cat([xy, xy + 2 + torch.rand(9, 2, generator=g) * 40], dim=1)
    expected = _grid_sample_paste(masks, boxes, (80, 90))
    for chunk in (2, 64):
        out = paste_masks(masks, boxes, (80, 90), chunk_size=chunk, aligned=True)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="padding"):
        paste_masks(masks, boxes, (80, 90), padding=2, aligned=True)


def test_aligned_paste_of_a_full_mask_covers_exactly_its_small_box():
    """A 6 px object: the aligned paste fills its box and nothing else; torchvision's paste is
    shifted and one pixel larger, which costs mask IoU on small objects."""
    masks = torch.ones(1, 1, 28, 28)
    box = torch.tensor([[10.0, 20.0, 16.0, 26.0]])
    truth = torch.zeros(40, 40, dtype=torch.bool)
    truth[20:26, 10:16] = True
    aligned = paste_masks(masks, box, (40, 40), mask_format="binary", aligned=True)[0, 0]
    legacy = paste_masks(masks, box, (40, 40), mask_format="binary")[0, 0]
    assert torch.equal(aligned, truth)
    assert (legacy & truth).sum() / (legacy | truth).sum() < 0.9
