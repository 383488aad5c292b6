"""The data pipeline's fast paths equal their plain versions: the per-plane float conversion of
``image_to_tensor`` and the one-call mask-stack flip of ``HorizontalFlipMasks``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maskrcnn.data.readers.image_io import image_to_tensor


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.booleans(), st.integers(0, 2**32 - 1))
def test_image_to_tensor_is_the_plain_float_conversion(height, width, strided, seed):
    image = np.random.default_rng(seed).integers(0, 256, (height, width * (2 if strided else 1), 3), dtype=np.uint8)
    if strided:
        image = image[:, ::2]  # a non-contiguous view, as a crop or flip can leave
    out = image_to_tensor(image)
    reference = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0
    assert out.dtype == torch.float32 and out.is_contiguous() and torch.equal(out, reference)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_image_to_tensor_keeps_every_channel(channels):
    image = np.random.default_rng(channels).integers(0, 256, (5, 7, channels), dtype=np.uint8)
    out = image_to_tensor(image)
    assert out.shape == (channels, 5, 7) and torch.equal(out, torch.from_numpy(image).permute(2, 0, 1).float() / 255.0)


@pytest.mark.parametrize("shape,dtype", [((5, 6, 7), np.uint8), ((1, 3, 4), np.uint8), ((3, 4, 5), np.float32)])
def test_mask_stack_flip_equals_albumentations_mask_by_mask(shape, dtype):
    import albumentations as A

    from maskrcnn.data.transforms import HorizontalFlipMasks

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*shape[1:], 3), dtype=np.uint8)
    masks = (rng.random(shape) > 0.5).astype(dtype)
    ours, theirs = (
        HorizontalFlipMasks(p=1.0)(image=image, masks=masks),
        A.HorizontalFlip(p=1.0)(image=image, masks=masks),
    )
    assert np.array_equal(ours["image"], theirs["image"])
    assert np.asarray(ours["masks"]).dtype == dtype and np.array_equal(
        np.asarray(ours["masks"]), np.asarray(theirs["masks"])
    )
