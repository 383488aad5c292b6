"""Synthetic "nuclei" dataset: a stand-in for a small real microscopy set, in COCO format.

Unlike ``bench.cells`` (one image size, non-overlapping blobs, polygons only), this set
mirrors the statistics of a typical small nucleus-segmentation set assembled from several
acquisitions:

- images of mixed sizes from 256x256 to 696x520 px (the default train split: 12 images, of which
  2 are 520x696 portrait and 4 are 256x256 squares; val: 3 images), RGBA PNGs (alpha opaque);
- each image size belongs to one "acquisition" with its own look (fluorescence: bright textured
  nuclei on a dark, unevenly lit background; brightfield stain: dark nuclei on a light background)
  and its own typical nucleus size;
- 20-150 nuclei per image, 3-95 px across (max bbox side), log-normal per image around the
  acquisition's size, plus a few tiny bright specks (debris-sized nuclei);
- nuclei may touch, and some overlap (their masks then overlap too, as in per-instance masks);
- masks are stored as compressed RLE (``annotations.json``) rasterised from the outline polygon by
  pycocotools, and the same outlines as polygons in ``annotations_poly.json`` (bbox and area
  always from the stored mask form).

Generation is deterministic for a seed and idempotent (``meta.json``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pycocotools import mask as mask_utils

from maskrcnn.data.shapes import generate_once

CATEGORIES = [{"id": 1, "name": "nucleus"}]
_FORMAT_VERSION = 1
_MAX_TRIES = 40  # placement attempts per nucleus
MIN_SIDE, MAX_SIDE = 3.0, 95.0  # object size range (max bbox side, px)


@dataclass(frozen=True)
class Acquisition:
    """One imaging setup: image size (width, height), look and typical nucleus diameter (px)."""

    width: int
    height: int
    style: str  # "fluorescence" | "stain"
    diameter: float  # median nucleus diameter in original pixels
    density: tuple[int, int]  # (min, max) nuclei per image


# One entry per image, in file order. Mixed sizes, 2 portrait images, 4 squares of 256 px.
TRAIN_IMAGES: tuple[Acquisition, ...] = (
    Acquisition(256, 256, "fluorescence", 20, (20, 60)),
    Acquisition(696, 520, "fluorescence", 32, (25, 55)),
    Acquisition(256, 256, "fluorescence", 20, (20, 60)),
    Acquisition(520, 696, "fluorescence", 28, (30, 70)),
    Acquisition(360, 360, "stain", 26, (20, 35)),
    Acquisition(696, 520, "fluorescence", 32, (25, 55)),
    Acquisition(256, 256, "fluorescence", 20, (20, 60)),
    Acquisition(320, 256, "fluorescence", 16, (100, 150)),
    Acquisition(696, 520, "fluorescence", 32, (25, 55)),
    Acquisition(520, 696, "fluorescence", 28, (30, 70)),
    Acquisition(256, 256, "fluorescence", 20, (20, 60)),
    Acquisition(640, 512, "stain", 36, (20, 30)),
)
VAL_IMAGES: tuple[Acquisition, ...] = (
    Acquisition(256, 256, "fluorescence", 20, (20, 60)),
    Acquisition(696, 520, "fluorescence", 32, (60, 90)),
    Acquisition(360, 360, "stain", 26, (20, 35)),
)


def _nucleus_polygon(rng: np.random.Generator, cx: float, cy: float, diameter: float) -> np.ndarray:
    """Vertices ``float64 [V, 2]`` of an irregular ellipse about ``diameter`` px across (long axis)."""
    n = int(rng.integers(16, 41))
    angles = np.arange(n) * (2 * math.pi / n)
    elongation = rng.uniform(1.0, 1.8)
    a, b = diameter / 2, diameter / 2 / elongation
    wobble = 1.0 + sum(rng.uniform(0.0, 0.1) * np.cos(k * angles + rng.uniform(0, 2 * math.pi)) for k in (2, 3, 5))
    x, y = a * np.cos(angles) * wobble, b * np.sin(angles) * wobble
    theta = rng.uniform(0, math.pi)
    return np.stack([cx + x * math.cos(theta) - y * math.sin(theta), cy + x * math.sin(theta) + y * math.cos(theta)], 1)


def _diameters(rng: np.random.Generator, acq: Acquisition, count: int) -> np.ndarray:
    """``count`` diameters: log-normal around the acquisition's size, ~8 % tiny specks of 3-8 px."""
    d = np.exp(rng.normal(math.log(acq.diameter), 0.35, count))
    specks = rng.random(count) < 0.08
    d[specks] = rng.uniform(3.0, 8.0, int(specks.sum()))
    return np.clip(d, MIN_SIDE, MAX_SIDE)


def _place(rng: np.random.Generator, acq: Acquisition, count: int) -> list[np.ndarray]:
    """Outlines of up to ``count`` nuclei; about 15 % may overlap a neighbour by up to a third of their radius."""
    polygons: list[np.ndarray] = []
    placed = np.zeros((0, 3))  # cx, cy, radius
    # Nuclei cluster: centres are drawn around a few cluster seeds half of the time.
    seeds = rng.uniform([0, 0], [acq.width, acq.height], (int(rng.integers(2, 6)), 2))
    for diameter in _diameters(rng, acq, count):
        overlap = rng.random() < 0.15
        for _ in range(_MAX_TRIES):
            r = diameter / 2
            if rng.random() < 0.5:
                cx, cy = seeds[rng.integers(len(seeds))] + rng.normal(0, 3 * acq.diameter, 2)
            else:
                cx, cy = rng.uniform(0, acq.width), rng.uniform(0, acq.height)
            if not (r <= cx <= acq.width - r and r <= cy <= acq.height - r):
                continue
            gap = np.hypot(placed[:, 0] - cx, placed[:, 1] - cy) - placed[:, 2] - r
            if len(placed) == 0 or gap.min() > (-r / 3 if overlap else 0.5):
                break
        else:
            continue
        polygons.append(_nucleus_polygon(rng, cx, cy, diameter))
        placed = np.vstack([placed, [cx, cy, r]])
    return polygons


def _smooth_noise(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """Low-frequency noise in [-1, 1], ``float64 [H, W]`` (upsampled coarse grid)."""
    gh, gw = max(2, int(height / scale)), max(2, int(width / scale))
    coarse = Image.fromarray(((rng.random((gh, gw)) * 255).astype(np.uint8)), mode="L")
    return np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.float64) / 127.5 - 1.0


def render_image(rng: np.random.Generator, acq: Acquisition, count: int) -> tuple[Image.Image, list[np.ndarray]]:
    """One RGBA image of ``acq`` with up to ``count`` nuclei; returns the image and their outlines."""
    w, h = acq.width, acq.height
    polygons = _place(rng, acq, count)
    # Per-nucleus brightness painted into one layer (overlaps: the brighter wins), then textured.
    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    for poly in polygons:
        draw.polygon([tuple(p) for p in poly], fill=int(rng.uniform(60, 255)))
    nuclei = np.asarray(layer.filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float64) / 255
    chromatin = 0.75 + 0.25 * _smooth_noise(rng, h, w, 3.0)  # granular texture inside nuclei
    illumination = 1.0 + 0.3 * _smooth_noise(rng, h, w, 120.0)
    if acq.style == "fluorescence":
        background = rng.uniform(5, 30) + 10 * _smooth_noise(rng, h, w, 60.0)
        grey = background + 200 * nuclei * chromatin * illumination + rng.normal(0, 5, (h, w))
        tint = rng.uniform(0.7, 1.0, 3) if rng.random() < 0.5 else np.ones(3)
        rgb = np.clip(grey[:, :, None] * tint, 0, 255)
    else:  # brightfield stain: light pink background, dark purple nuclei
        paper = np.array([235.0, 215.0, 225.0]) + 10 * _smooth_noise(rng, h, w, 80.0)[:, :, None]
        stain = np.array([150.0, 170.0, 90.0])  # absorbed per channel at full nucleus density
        rgb = paper - (nuclei * chromatin * illumination)[:, :, None] * stain + rng.normal(0, 4, (h, w, 1))
        rgb = np.clip(rgb, 0, 255)
    rgba = np.concatenate([rgb.astype(np.uint8), np.full((h, w, 1), 255, np.uint8)], axis=2)
    return Image.fromarray(rgba, mode="RGBA"), polygons


def _annotations(poly: np.ndarray, width: int, height: int) -> tuple[dict, dict] | None:
    """``(rle_annotation, polygon_annotation)`` without ids, or None when the outline rasterises to nothing."""
    flat = [round(float(v), 2) for v in poly.ravel()]
    rle = mask_utils.merge(mask_utils.frPyObjects([flat], height, width))
    area = float(mask_utils.area(rle))
    if area < 1:
        return None
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    rle_ann = {
        "category_id": 1,
        "iscrowd": 0,
        "area": area,
        "bbox": bbox,
        "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
    }
    xs, ys = poly[:, 0], poly[:, 1]
    x0, y0 = float(xs.min()), float(ys.min())
    poly_area = 0.5 * abs(float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))))
    poly_ann = {
        "category_id": 1,
        "iscrowd": 0,
        "area": round(poly_area, 2),
        "segmentation": [flat],
        "bbox": [round(x0, 2), round(y0, 2), round(float(xs.max()) - x0, 2), round(float(ys.max()) - y0, 2)],
    }
    return rle_ann, poly_ann


def _write_split(root: Path, split: int, name: str, specs: tuple[Acquisition, ...], seed: int) -> None:
    image_dir = root / name
    image_dir.mkdir(parents=True, exist_ok=True)
    images, rle_anns, poly_anns = [], [], []
    for i, acq in enumerate(specs):
        rng = np.random.default_rng([seed, split, i])
        image, polygons = render_image(rng, acq, int(rng.integers(acq.density[0], acq.density[1] + 1)))
        file_name = f"{i:04d}.png"
        image.save(image_dir / file_name)
        images.append({"id": i + 1, "file_name": file_name, "width": acq.width, "height": acq.height})
        for poly in polygons:
            pair = _annotations(poly, acq.width, acq.height)
            if pair is None:
                continue
            for anns, ann in zip((rle_anns, poly_anns), pair, strict=True):
                anns.append({"id": len(anns) + 1, "image_id": i + 1, **ann})
    for file, anns in (("annotations.json", rle_anns), ("annotations_poly.json", poly_anns)):
        with open(image_dir / file, "w", encoding="utf-8") as f:
            json.dump({"images": images, "annotations": anns, "categories": CATEGORIES}, f)


def generate_nuclei(out_dir: str | os.PathLike, seed: int = 0, polygons: bool = False) -> dict[str, dict[str, str]]:
    """Write ``out_dir/{train,val}/`` RGBA PNGs + ``annotations.json`` (RLE) + ``annotations_poly.json``.

    Args:
        polygons: return the polygon annotation files instead of the RLE ones (same images).
    Returns:
        ``{"train": {"image_dir", "annotation_file"}, "val": {...}}`` as for ``generate_cells``.
    """
    meta = json.loads(
        json.dumps(
            {
                "generator": "nuclei",
                "version": _FORMAT_VERSION,
                "seed": seed,  # as stored
                "train": [list(a.__dict__.values()) for a in TRAIN_IMAGES],
                "val": [list(a.__dict__.values()) for a in VAL_IMAGES],
            }
        )
    )

    def write(root: Path) -> None:
        for split, (name, specs) in enumerate((("train", TRAIN_IMAGES), ("val", VAL_IMAGES))):
            _write_split(root, split, name, specs, seed)

    paths = generate_once(out_dir, meta, write)
    if polygons:
        for split in paths.values():
            split["annotation_file"] = str(Path(split["annotation_file"]).with_name("annotations_poly.json"))
    return paths
