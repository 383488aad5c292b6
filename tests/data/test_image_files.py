"""Image files: missing, empty, corrupt, truncated or mis-sized files, and unusual but valid images."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.coco_files import ann, make
from maskrcnn.data.transforms import build_transforms
from maskrcnn.errors import DatasetError


# ---------------------------------------------------------------- bad image files
def test_missing_zero_byte_corrupt_and_truncated_files(tmp_path):
    imgs = [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48} for i in (1, 2, 3, 4, 5)]
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "1.jpg").write_bytes(buf.getvalue())  # good
    (tmp_path / "3.jpg").write_bytes(b"")  # zero bytes
    (tmp_path / "4.jpg").write_bytes(b"this is not an image at all")  # corrupt
    (tmp_path / "5.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # truncated
    ds = make(tmp_path, images=imgs, annotations=[], write_images=False)
    assert ds[0][0].shape == (3, 48, 64)
    for index, pattern in [
        (1, "2.jpg'.*image id 2.*does not exist"),
        (2, "3.jpg'.*image id 3.*empty"),
        (3, "4.jpg'.*image id 4.*cannot be read"),
        (4, "5.jpg'.*image id 5.*truncated"),
    ]:
        with pytest.raises(DatasetError, match=pattern):
            ds[index]
    assert [b["image_id"] for b in ds.check_images()] == [2, 3, 4]  # header check cannot see truncation
    assert [b["image_id"] for b in ds.check_images(full_decode=True)] == [2, 3, 4, 5]


def test_size_mismatch_is_reported(tmp_path):
    Image.new("RGB", (30, 30)).save(tmp_path / "a.png")
    ds = make(tmp_path, write_images=False)
    with pytest.raises(DatasetError, match=r"a\.png'.*image id 1.*30x30.*says 20x16"):
        ds[0]
    assert len(ds.check_images()) == 1


# ---------------------------------------------------------------- unusual but valid images
def _load_single(tmp_path, pil_image, name="a.png", **save_kwargs):
    pil_image.save(tmp_path / name, **save_kwargs)
    w, h = pil_image.size
    ds = make(
        tmp_path, images=[{"id": 1, "file_name": name, "width": w, "height": h}], annotations=[], write_images=False
    )
    image, _ = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, h, w)
    return (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    gray16 = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (8, 1))
    out = _load_single(tmp_path, Image.fromarray(gray16))
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, -1].tolist() == [255, 255, 255]
    np.testing.assert_allclose(out[0, :, 0], np.round(gray16[0] / 257.0), atol=1)  # smooth ramp, not saturated


def test_cmyk_rgba_gray_palette(tmp_path):
    cmyk = _load_single(tmp_path, Image.new("CMYK", (16, 8), (0, 255, 255, 0)), "c.jpg")
    assert np.abs(cmyk.astype(int) - [255, 0, 0]).max() <= 3  # CMYK(0,1,1,0) is red
    rgba = _load_single(tmp_path, Image.new("RGBA", (16, 8), (10, 200, 30, 0)), "r.png")
    assert rgba[0, 0].tolist() == [10, 200, 30]
    gray = _load_single(tmp_path, Image.new("L", (16, 8), 77), "g.png")
    assert gray[0, 0].tolist() == [77, 77, 77]
    pal = _load_single(tmp_path, Image.new("RGB", (16, 8), (0, 0, 255)).convert("P"), "p.png")
    assert pal[0, 0].tolist() == [0, 0, 255]


def test_exif_orientation_is_applied(tmp_path):
    raw = np.zeros((20, 30, 3), np.uint8)  # stored landscape 30x20, red on the left
    raw[:, :10] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise -> portrait 20x30, red on top
    Image.fromarray(raw).save(tmp_path / "e.jpg", exif=exif, quality=100)
    images = [{"id": 1, "file_name": "e.jpg", "width": 20, "height": 30}]
    ds = make(tmp_path, images=images, annotations=[ann(1, [[0, 0, 20, 0, 20, 10, 0, 10]])], write_images=False)
    assert ds.check_images() == []
    image, target = ds[0]
    assert image.shape == (3, 30, 20)
    assert image[0, :8].mean() > 0.9 and image[0, 12:].mean() < 0.1  # red rows are now at the top
    assert target["boxes"].tolist() == [[0, 0, 20, 10]]
    images[0].update(width=30, height=20)  # json written against the un-rotated pixels
    with pytest.raises(DatasetError, match=r"e\.jpg'.*image id 1.*20x30 after EXIF"):
        make(tmp_path, images=images, annotations=[], write_images=False)[0]


def test_huge_image_loads_and_default_transform_downsizes(tmp_path):
    Image.new("L", (10000, 10000), 77).save(tmp_path / "huge.png", compress_level=1)
    images = [{"id": 1, "file_name": "huge.png", "width": 10000, "height": 10000}]
    ds = make(
        tmp_path,
        images=images,
        annotations=[ann(1, [[0, 0, 5000, 0, 5000, 5000, 0, 5000]])],
        write_images=False,
        transforms=build_transforms("default", True, min_size=100, max_size=100, hflip_prob=0.0),
    )
    image, target = ds[0]
    assert image.shape == (3, 100, 100) and target["orig_size"] == (10000, 10000)
    assert abs(image[0, 50, 50].item() - 77 / 255) < 1e-6
    assert target["boxes"].tolist() == [[0, 0, 50, 50]] and target["masks"].shape == (1, 100, 100)
