"""Synthetic "shapes" instance-segmentation dataset (squares, circles, triangles) in COCO format.

Each image has a random background colour and 1-4 non-overlapping shapes with random colours,
sizes, positions and rotations. Masks are exact polygons (a circle is a 24-32 gon), so the drawn
pixels and the annotation agree. Generation is deterministic for a given seed and idempotent: a
``meta.json`` records the parameters and a second call with the same parameters does nothing.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = [{"id": 1, "name": "square"}, {"id": 2, "name": "circle"}, {"id": 3, "name": "triangle"}]
_FORMAT_VERSION = 1
_MAX_TRIES = 50  # placement attempts per shape before giving up on it


def _shape_polygon(rng: np.random.Generator, category_id: int, cx: float, cy: float, radius: float) -> list[float]:
    """Vertices (flat x, y list) of a shape centred at (cx, cy) with circumradius ``radius``."""
    if category_id == 2:
        n, rotation = int(rng.integers(24, 33)), 0.0
    else:
        n, rotation = (4 if category_id == 1 else 3), float(rng.uniform(0, 2 * math.pi))
    angles = rotation + np.arange(n) * (2 * math.pi / n)
    xs, ys = cx + radius * np.cos(angles), cy + radius * np.sin(angles)
    return [round(float(v), 2) for xy in zip(xs, ys, strict=True) for v in xy]


def _colour(rng: np.random.Generator, avoid: np.ndarray | None = None) -> tuple[int, int, int]:
    """A random colour at least a clear distance away from ``avoid`` (the background)."""
    while True:
        c = rng.integers(0, 256, size=3)
        if avoid is None or np.abs(c - avoid).sum() > 150:
            return int(c[0]), int(c[1]), int(c[2])


def _bbox(poly: list[float]) -> tuple[float, float, float, float]:
    xs, ys = poly[0::2], poly[1::2]
    return min(xs), min(ys), max(xs), max(ys)


def _disjoint(a: tuple, b: tuple, gap: float = 2.0) -> bool:
    return a[2] + gap < b[0] or b[2] + gap < a[0] or a[3] + gap < b[1] or b[3] + gap < a[1]


def render_image(rng: np.random.Generator, size: int) -> tuple[Image.Image, list[tuple[int, list[float]]]]:
    """One image and its shapes as ``[(category_id, flat polygon), ...]``."""
    background = _colour(rng)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    shapes: list[tuple[int, list[float]]] = []
    for _ in range(int(rng.integers(1, 5))):
        for _ in range(_MAX_TRIES):
            category_id = int(rng.integers(1, 4))
            radius = float(rng.uniform(size / 12, size / 5))
            cx, cy = rng.uniform(radius, size - radius, size=2)
            poly = _shape_polygon(rng, category_id, float(cx), float(cy), radius)
            if all(_disjoint(_bbox(poly), _bbox(other)) for _, other in shapes):
                break
        else:
            continue
        draw.polygon(list(zip(poly[0::2], poly[1::2], strict=True)), fill=_colour(rng, np.array(background)))
        shapes.append((category_id, poly))
    return image, shapes


def _write_split(root: Path, split: int, name: str, count: int, size: int, seed: int, ext: str) -> dict:
    image_dir = root / name
    image_dir.mkdir(parents=True, exist_ok=True)
    images: list[dict] = []
    annotations: list[dict] = []
    for i in range(count):
        rng = np.random.default_rng([seed, split, i])  # independent stream per (split, image)
        image, shapes = render_image(rng, size)
        file_name = f"{i:06d}.{ext}"
        image.save(image_dir / file_name, quality=95) if ext == "jpg" else image.save(image_dir / file_name)
        images.append({"id": i + 1, "file_name": file_name, "width": size, "height": size})
        for category_id, poly in shapes:
            x0, y0, x1, y1 = _bbox(poly)
            xs, ys = np.array(poly[0::2]), np.array(poly[1::2])
            area = 0.5 * abs(float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": category_id,
                    "segmentation": [poly],
                    "area": round(area, 2),
                    "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                    "iscrowd": 0,
                }
            )
    annotation_file = image_dir / "annotations.json"
    with open(annotation_file, "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)
    return {"image_dir": str(image_dir), "annotation_file": str(annotation_file)}


# Shapes have radii of size/12 .. size/5: below 32 px they shrink to a few pixels.
MIN_IMAGE_SIZE = 32


def options_problem(num_train: object, num_val: object, image_size: object) -> str | None:
    """What is wrong with these ``generate_shapes`` arguments (``"num_val=0 must be ..."``), or None."""
    for name, value, low in (
        ("num_train", num_train, 1),
        ("num_val", num_val, 1),
        ("image_size", image_size, MIN_IMAGE_SIZE),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            return f"{name}={value!r} must be an integer >= {low}"
    return None


def generate_shapes(
    out_dir: str | os.PathLike,
    num_train: int = 300,
    num_val: int = 50,
    image_size: int = 128,
    seed: int = 0,
    image_format: str = "png",
) -> dict[str, dict[str, str]]:
    """Write ``out_dir/{train,val}/`` images + ``annotations.json`` (COCO) and ``out_dir/meta.json``.

    Returns:
        ``{"train": {"image_dir", "annotation_file"}, "val": {...}}`` — directly usable as the
        ``train`` / ``val`` arguments of ``CocoDataModule``.
    """
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    problem = options_problem(num_train, num_val, image_size)
    if problem is not None:
        raise ValueError(f"generate_shapes: {problem}")
    meta = {
        "version": _FORMAT_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "seed": seed,
        "image_format": image_format,
    }

    def write(root: Path) -> None:
        for split, (name, count) in enumerate((("train", num_train), ("val", num_val))):
            _write_split(root, split, name, count, image_size, seed, image_format)

    return generate_once(out_dir, meta, write)


def generate_once(out_dir: str | os.PathLike, meta: dict, write: Callable[[Path], None]) -> dict[str, dict[str, str]]:
    """Run ``write(root)`` unless ``root/meta.json`` already records ``meta`` (same generator and
    parameters) and both splits' annotation files exist; ``meta.json`` is written last, so an
    interrupted generation is redone. Returns the ``{"train"|"val": {"image_dir", "annotation_file"}}``
    paths of ``root/{train,val}/``."""
    root = Path(out_dir)
    paths = {
        name: {"image_dir": str(root / name), "annotation_file": str(root / name / "annotations.json")}
        for name in ("train", "val")
    }
    meta_file = root / "meta.json"
    if meta_file.is_file() and all(Path(p["annotation_file"]).is_file() for p in paths.values()):
        with open(meta_file, encoding="utf-8") as f:
            if json.load(f) == meta:
                return paths
    meta_file.unlink(missing_ok=True)
    write(root)
    with open(meta_file, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    return paths
