"""Synthetic "cells" dataset: dense, small, touching blobs on a noisy background, in COCO format.

A stand-in for fluorescence-microscopy nuclei, the case where Mask R-CNN's default settings
(anchors from 32 px, 100 detections per image) fit worst: 20-150 objects per image, 3-30 px
across, one class. Images are RGBA PNGs (alpha opaque) of two orientations (mostly landscape,
a few portrait) so that aspect-ratio grouping and odd image modes are exercised too.

Each blob is an ellipse whose radius is perturbed by low-frequency noise (a 24-40-gon); blobs may
touch but never overlap, so the drawn pixels and the polygons agree. Generation is deterministic
for a seed and idempotent (``meta.json``), like ``maskrcnn.data.shapes``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from maskrcnn.data.shapes import generate_once

CATEGORIES = [{"id": 1, "name": "nucleus"}]
_FORMAT_VERSION = 1
_MAX_TRIES = 30  # placement attempts per blob


def _blob_polygon(rng: np.random.Generator, cx: float, cy: float, diameter: float) -> np.ndarray:
    """Vertices ``float64 [V, 2]`` of an irregular ellipse of about ``diameter`` px across."""
    n = int(rng.integers(24, 41))
    angles = np.arange(n) * (2 * math.pi / n)
    elongation = rng.uniform(1.0, 1.6)
    a, b = diameter / 2 * math.sqrt(elongation), diameter / 2 / math.sqrt(elongation)
    # Two random low-frequency harmonics make the outline irregular but still star-shaped.
    wobble = 1.0 + sum(rng.uniform(0.0, 0.08) * np.cos(k * angles + rng.uniform(0, 2 * math.pi)) for k in (2, 3))
    x, y = a * np.cos(angles) * wobble, b * np.sin(angles) * wobble
    theta = rng.uniform(0, math.pi)
    rot_x = x * math.cos(theta) - y * math.sin(theta)
    rot_y = x * math.sin(theta) + y * math.cos(theta)
    return np.stack([cx + rot_x, cy + rot_y], axis=1)


def render_image(rng: np.random.Generator, width: int, height: int, count: int) -> tuple[Image.Image, list[np.ndarray]]:
    """One RGBA image with up to ``count`` blobs; returns the image and their polygons."""
    background = rng.uniform(10, 40)
    # Uneven illumination: a smooth gradient plus pixel noise, as in widefield microscopy.
    yy, xx = np.mgrid[0:height, 0:width]
    gradient = 15 * (xx / width * rng.uniform(-1, 1) + yy / height * rng.uniform(-1, 1))
    canvas = np.clip(background + gradient + rng.normal(0, 6, (height, width)), 0, 255)
    layer = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(layer)
    polygons: list[np.ndarray] = []
    centres = np.zeros((0, 3))  # x, y, radius of placed blobs
    for _ in range(count):
        for _ in range(_MAX_TRIES):
            diameter = float(np.exp(rng.uniform(math.log(3.0), math.log(30.0))))
            cx, cy = rng.uniform(diameter / 2, width - diameter / 2), rng.uniform(diameter / 2, height - diameter / 2)
            poly = _blob_polygon(rng, cx, cy, diameter)
            radius = float(np.max(np.hypot(poly[:, 0] - cx, poly[:, 1] - cy)))
            if len(centres) == 0 or np.all(
                np.hypot(centres[:, 0] - cx, centres[:, 1] - cy) > centres[:, 2] + radius + 1
            ):
                break
        else:
            continue
        draw.polygon([tuple(p) for p in poly], fill=int(rng.uniform(90, 250)))
        polygons.append(poly)
        centres = np.vstack([centres, [cx, cy, radius]])
    blobs = np.asarray(layer.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float64)
    grey = np.clip(canvas + blobs * rng.uniform(0.7, 1.0), 0, 255).astype(np.uint8)
    tint = rng.uniform(0.6, 1.0, size=3)  # stain colour
    rgb = np.clip(grey[:, :, None] * tint, 0, 255).astype(np.uint8)
    rgba = np.concatenate([rgb, np.full((height, width, 1), 255, np.uint8)], axis=2)
    return Image.fromarray(rgba, mode="RGBA"), polygons


def _annotation(poly: np.ndarray, ann_id: int, image_id: int) -> dict:
    xs, ys = poly[:, 0], poly[:, 1]
    area = 0.5 * abs(float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))))
    x0, y0 = float(xs.min()), float(ys.min())
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "iscrowd": 0,
        "segmentation": [[round(float(v), 2) for v in poly.ravel()]],
        "area": round(area, 2),
        "bbox": [round(x0, 2), round(y0, 2), round(float(xs.max()) - x0, 2), round(float(ys.max()) - y0, 2)],
    }


def _write_split(
    root: Path,
    split: int,
    name: str,
    count: int,
    size: tuple[int, int],
    portrait_every: int,
    instances: tuple[int, int],
    seed: int,
) -> None:
    image_dir = root / name
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        rng = np.random.default_rng([seed, split, i])
        width, height = size if portrait_every <= 0 or (i + 1) % portrait_every else size[::-1]
        image, polygons = render_image(rng, width, height, int(rng.integers(instances[0], instances[1] + 1)))
        file_name = f"{i:04d}.png"
        image.save(image_dir / file_name)
        images.append({"id": i + 1, "file_name": file_name, "width": width, "height": height})
        for poly in polygons:
            annotations.append(_annotation(poly, len(annotations) + 1, i + 1))
    with open(image_dir / "annotations.json", "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)


def generate_cells(
    out_dir: str | os.PathLike,
    num_train: int = 16,
    num_val: int = 6,
    image_size: tuple[int, int] = (512, 384),
    portrait_every: int = 6,
    instances_per_image: tuple[int, int] = (20, 150),
    seed: int = 0,
) -> dict[str, dict[str, str]]:
    """Write ``out_dir/{train,val}/`` RGBA PNGs + ``annotations.json`` and ``out_dir/meta.json``.

    Args:
        image_size: (width, height) of a landscape image; every ``portrait_every``-th image is
            rotated to portrait (0: none).
        instances_per_image: (min, max) blobs attempted per image (a few may not fit).
    Returns:
        ``{"train": {"image_dir", "annotation_file"}, "val": {...}}`` as for ``generate_shapes``.
    """
    meta = {
        "generator": "cells",
        "version": _FORMAT_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": list(image_size),
        "portrait_every": portrait_every,
        "instances_per_image": list(instances_per_image),
        "seed": seed,
    }

    def write(root: Path) -> None:
        for split, (name, count) in enumerate((("train", num_train), ("val", num_val))):
            _write_split(root, split, name, count, tuple(image_size), portrait_every, tuple(instances_per_image), seed)

    return generate_once(out_dir, meta, write)
