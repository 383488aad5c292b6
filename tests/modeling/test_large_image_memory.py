"""Large photos with many objects: target masks are resized a few at a time, and where only a COCO
evaluator reads the predicted masks (validation, eval) they come as RLE, one mask pasted at a time.
Both must leave the numbers exactly as they were."""

from __future__ import annotations

import pytest
import torch
from pycocotools import mask as mask_utils
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from maskrcnn.modeling.transform import MASK_RESIZE_CHUNK, ImageTransform
from tests.helpers.tiny_model import build_tiny_model

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.mark.parametrize("training", [False, True])
def test_chunked_target_mask_resize_equals_torchvision_with_more_masks_than_a_chunk(training):
    g = torch.Generator().manual_seed(0)
    n = 2 * MASK_RESIZE_CHUNK + 5  # three chunks, the last one partial
    image = torch.rand(3, 75, 110, generator=g)
    masks = (torch.rand(n, 75, 110, generator=g) > 0.5).to(torch.uint8)
    xy = torch.rand(n, 2, generator=g) * 50
    target = {"boxes": torch.cat([xy, xy + 10], dim=1), "labels": torch.ones(n, dtype=torch.int64), "masks": masks}
    ours = ImageTransform(min_size=(90,), max_size=150, resize_in_training=True).train(training)
    theirs = GeneralizedRCNNTransform((90,), 150, MEAN, STD).train(training)
    _, (out,) = ours([image], [dict(target)])
    _, (ref,) = theirs([image], [dict(target)])
    assert out["masks"].shape == (n, 90, 132) and out["masks"].dtype == torch.uint8
    assert torch.equal(out["masks"], ref["masks"])


def _detections(mask_format: str | None):
    net = build_tiny_model(num_classes=3)
    torch.manual_seed(1)
    images = [torch.rand(3, 96, 128), torch.rand(3, 80, 112)]
    with torch.no_grad():
        return net(images) if mask_format is None else net(images, mask_format=mask_format)


def test_forward_mask_format_overrides_the_networks_for_one_call_with_the_same_masks():
    prob = _detections(None)["detections"]  # the network's own format: "prob"
    rle = _detections("rle")["detections"]
    assert sum(len(d["scores"]) for d in prob) > 0
    for p, r in zip(prob, rle, strict=True):
        assert torch.equal(p["boxes"], r["boxes"]) and torch.equal(p["scores"], r["scores"])
        assert isinstance(p["masks"], torch.Tensor) and isinstance(r["masks"], list)
        if len(r["masks"]):
            decoded = torch.from_numpy(mask_utils.decode(r["masks"])).permute(2, 0, 1)[:, None].bool()
            assert torch.equal(decoded, p["masks"] > 0.5)


def test_forward_rejects_an_unknown_mask_format_naming_it():
    with pytest.raises(ValueError, match="mask_format must be one of .* got 'polygon'"):
        _detections("polygon")
