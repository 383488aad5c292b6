"""Synthetic "large" dataset: 4000x3000 photos with 10-40 px objects, in COCO format (polygons).

The case sliced inference and tile training are for: resized to the model's 800 / 1333 px, a 20 px
object shrinks to 5 px, below every anchor; at native resolution it is an ordinary small object.
Two classes of polygons on a textured background: irregular "blobs" and rotated "plates"
(rectangles). Objects never overlap, so the drawn pixels and the polygons agree. JPEG images
(a noisy 12-megapixel PNG would be ~30 MB). Deterministic for a seed and idempotent
(``meta.json``), like ``maskrcnn.data.shapes``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from maskrcnn.data.shapes import generate_once

CATEGORIES = [{"id": 1, "name": "blob"}, {"id": 2, "name": "plate"}]
_FORMAT_VERSION = 1
_MAX_TRIES = 20  # placement attempts per object


def object_polygon(rng: np.random.Generator, category: int, cx: float, cy: float, size: float) -> np.ndarray:
    """Vertices ``float64 [V, 2]`` of an object at most ``size`` px across (its longest chord):
    category 1 an irregular ellipse (16-24-gon), category 2 a rotated rectangle of aspect 1-2."""
    theta = rng.uniform(0, math.pi)
    if category == 1:
        n = int(rng.integers(16, 25))
        angles = np.arange(n) * (2 * math.pi / n)
        radius = size / 2 * (1.0 + rng.uniform(0.0, 0.1) * np.cos(3 * angles + rng.uniform(0, 2 * math.pi))) / 1.1
        x, y = radius * np.cos(angles), radius * np.sin(angles) / 1.3
    else:
        aspect = rng.uniform(1.0, 2.0)
        w = size / 2 / math.sqrt(1 + 1 / aspect**2)  # half the long side: the diagonal is ``size``
        h = w / aspect
        x, y = np.array([-w, w, w, -w]), np.array([-h, -h, h, h])
    return np.stack([cx + x * math.cos(theta) - y * math.sin(theta), cy + x * math.sin(theta) + y * math.cos(theta)], 1)


def render_image(
    rng: np.random.Generator, width: int, height: int, count: int, sizes: tuple[float, float]
) -> tuple[Image.Image, list[tuple[int, np.ndarray]]]:
    """One RGB image with up to ``count`` objects of ``sizes`` px; returns it and ``(category, polygon)``s."""
    # Low-frequency texture (a blurred 1/16-size noise field) plus fine noise: a plausible background.
    grid = (max(1, height // 16), max(1, width // 16))
    coarse = 40 * rng.normal(0, 1, (*grid, 1)) + 12 * rng.normal(0, 1, (*grid, 3))  # mostly brightness, a little hue
    field = np.asarray(Image.fromarray(np.uint8(np.clip(128 + coarse, 0, 255))).resize((width, height)))
    canvas = Image.fromarray(np.uint8(np.clip(field + rng.normal(0, 8, (height, width, 3)), 0, 255)))
    draw = ImageDraw.Draw(canvas)
    objects: list[tuple[int, np.ndarray]] = []
    placed = np.zeros((0, 3))  # x, y, radius
    for _ in range(count):
        for _ in range(_MAX_TRIES):
            size = float(np.exp(rng.uniform(math.log(sizes[0]), math.log(sizes[1]))))
            margin = size
            cx, cy = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
            category = int(rng.integers(1, 3))
            poly = object_polygon(rng, category, cx, cy, size)
            radius = float(np.max(np.hypot(poly[:, 0] - cx, poly[:, 1] - cy)))
            if len(placed) == 0 or np.all(np.hypot(placed[:, 0] - cx, placed[:, 1] - cy) > placed[:, 2] + radius + 2):
                break
        else:
            continue
        colour = np.clip(np.array((200, 60, 40) if category == 1 else (40, 80, 200)) + rng.integers(-30, 31, 3), 0, 255)
        draw.polygon([tuple(p) for p in poly], fill=tuple(int(c) for c in colour))
        objects.append((category, poly))
        placed = np.vstack([placed, [cx, cy, radius]])
    return canvas.filter(ImageFilter.GaussianBlur(0.5)), objects


def _annotation(category: int, poly: np.ndarray, ann_id: int, image_id: int) -> dict:
    xs, ys = poly[:, 0], poly[:, 1]
    area = 0.5 * abs(float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))))
    x0, y0 = float(xs.min()), float(ys.min())
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category,
        "iscrowd": 0,
        "segmentation": [[round(float(v), 2) for v in poly.ravel()]],
        "area": round(area, 2),
        "bbox": [round(x0, 2), round(y0, 2), round(float(xs.max()) - x0, 2), round(float(ys.max()) - y0, 2)],
    }


def generate_large_images(
    out_dir: str | os.PathLike,
    num_train: int = 6,
    num_val: int = 3,
    image_size: tuple[int, int] = (4000, 3000),
    instances_per_image: tuple[int, int] = (150, 300),
    object_sizes: tuple[float, float] = (10.0, 40.0),
    portrait_every: int = 3,
    seed: int = 0,
) -> dict[str, dict[str, str]]:
    """Write ``out_dir/{train,val}/`` JPEGs + ``annotations.json`` (polygons, ``bbox``, ``area``) and
    ``out_dir/meta.json``. The default set: 6 train / 3 val photos of 4000x3000 (every third portrait).

    Args:
        image_size: (width, height) of a landscape image; every ``portrait_every``-th image is
            portrait (0: none), so that aspect-ratio grouping has both orientations.
        instances_per_image: (min, max) objects attempted per image (a few may not fit).
        object_sizes: (min, max) object diameter in px, drawn log-uniformly.
    Returns:
        ``{"train": {"image_dir", "annotation_file"}, "val": {...}}`` as for ``generate_shapes``.
    """
    meta = {
        "generator": "large_images",
        "version": _FORMAT_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": list(image_size),
        "instances_per_image": list(instances_per_image),
        "object_sizes": list(object_sizes),
        "portrait_every": portrait_every,
        "seed": seed,
    }

    def write(root: Path) -> None:
        for split, (name, count) in enumerate((("train", num_train), ("val", num_val))):
            image_dir = root / name
            image_dir.mkdir(parents=True, exist_ok=True)
            images, annotations = [], []
            for i in range(count):
                rng = np.random.default_rng([seed, split, i])
                lo, hi = instances_per_image
                portrait = portrait_every > 0 and (i + 1) % portrait_every == 0
                width, height = image_size[::-1] if portrait else image_size
                image, objects = render_image(rng, width, height, int(rng.integers(lo, hi + 1)), object_sizes)
                file_name = f"{i:04d}.jpg"
                image.save(image_dir / file_name, quality=92)
                images.append({"id": i + 1, "file_name": file_name, "width": width, "height": height})
                for category, poly in objects:
                    annotations.append(_annotation(category, poly, len(annotations) + 1, i + 1))
            with open(image_dir / "annotations.json", "w", encoding="utf-8") as f:
                json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)

    return generate_once(out_dir, meta, write)
