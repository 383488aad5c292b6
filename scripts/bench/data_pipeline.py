"""Data-pipeline throughput per worker: ours vs a torchvision ``references/detection``-style
pipeline (``--task data``).

Both pipelines produce the same thing per image, in one process (num_workers=0, one thread, as
inside a DataLoader worker): the JPEG decoded, resized so the short edge is 800 (long edge <= 1333),
randomly h-flipped, as a float tensor, with one mask per polygon at that size. The baseline
rasterises each polygon over the whole original image and resizes the masks; ours rasterises the
scaled polygons at the output size, over their bounding boxes only. The images are synthetic
JPEGs (``make_synthetic_coco``) or the first images of a COCO-format dataset (``run_on_dataset``).
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils


def _photo_like(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3]: smooth colour gradients plus sensor-like noise, so JPEG files have
    realistic entropy (a flat synthetic image would decode unrealistically fast)."""
    coarse = Image.fromarray(rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.float32)
    noisy = smooth + rng.normal(0.0, 14.0, size=smooth.shape)
    return noisy.clip(0, 255).astype(np.uint8)


def _polygon(rng: np.random.Generator, height: int, width: int) -> list[float]:
    """Star-shaped polygon (16-24 vertices) with a radius of 4-20% of the image."""
    n = int(rng.integers(16, 25))
    radius = rng.uniform(0.04, 0.2) * min(height, width)
    cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = radius * rng.uniform(0.5, 1.0, n)
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1).round(2).ravel().tolist()


def make_synthetic_coco(
    root: str | Path,
    num_images: int = 64,
    width: int = 640,
    height: int = 480,
    instances: int = 7,
    categories: int = 5,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write ``num_images`` JPEGs (quality 90) with ``instances`` polygon objects each and a COCO json.

    Returns:
        (image_dir, annotation_file).
    """
    rng = np.random.default_rng(seed)
    image_dir = Path(root) / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        pixels = _photo_like(rng, height, width)
        for _ in range(instances):
            poly = _polygon(rng, height, width)
            rle = mask_utils.frPyObjects([poly], height, width)[0]
            inside = mask_utils.decode(rle).astype(bool)
            pixels[inside] = (pixels[inside] * 0.4 + rng.integers(0, 256, 3) * 0.6).astype(np.uint8)
            x, y, w, h = mask_utils.toBbox(rle).tolist()
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, categories + 1)),
                    "segmentation": [poly],
                    "area": float(mask_utils.area(rle)),
                    "bbox": [x, y, w, h],
                    "iscrowd": 0,
                }
            )
        file_name = f"{image_id:06d}.jpg"
        Image.fromarray(pixels).save(image_dir / file_name, quality=90)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
    ann_file = Path(root) / "instances.json"
    categories_json = [{"id": k, "name": f"class_{k}"} for k in range(1, categories + 1)]
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories_json}))
    return image_dir, ann_file


class TorchvisionStyleDataset(torch.utils.data.Dataset):
    """CocoDetection + polygon -> mask conversion + v2 transforms, as in torchvision's
    ``references/detection`` recipe (but resizing in the pipeline, as our data module does).

    Item ``i`` is ``(image Tensor[3, H, W] float32 in [0, 1], target)`` with target
    ``boxes`` BoundingBoxes[N, 4] xyxy, ``labels Tensor[N] int64``, ``masks`` Mask[N, H, W] uint8.
    """

    def __init__(
        self,
        image_dir: str | Path,
        annotation_file: str | Path,
        min_size: int = 800,
        max_size: int = 1333,
        hflip_prob: float = 0.5,
    ) -> None:
        from torchvision.datasets import CocoDetection
        from torchvision.transforms import v2

        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco = CocoDetection(str(image_dir), str(annotation_file))
        self.transforms = v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(min_size, max_size=max_size),
                v2.RandomHorizontalFlip(hflip_prob),
                v2.ToDtype(torch.float32, scale=True),
            ]
        )

    def __len__(self) -> int:
        return len(self.coco)

    @staticmethod
    def _polys_to_masks(anns: list[dict], height: int, width: int) -> torch.Tensor:
        """uint8 Tensor[N, H, W] from COCO polygons (what ConvertCocoPolysToMask does)."""
        masks = torch.zeros((len(anns), height, width), dtype=torch.uint8)
        for k, ann in enumerate(anns):
            rles = mask_utils.frPyObjects(ann["segmentation"], height, width)
            masks[k] = torch.from_numpy(mask_utils.decode(rles).any(axis=2))
        return masks

    def __getitem__(self, index: int):
        from torchvision import tv_tensors

        image, anns = self.coco[index]
        width, height = image.size
        anns = [a for a in anns if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(0, width)
        boxes[:, 1::2].clamp_(0, height)
        keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
        masks = self._polys_to_masks(anns, height, width)[keep]
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes[keep], format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)[keep],
            "masks": tv_tensors.Mask(masks),
        }
        return self.transforms(image, target)


def build_pipelines(image_dir: Path, ann_file: Path, min_size: int = 800, max_size: int = 1333) -> dict:
    """{"ours": CocoInstanceDataset + default train augmentation, "torchvision": TorchvisionStyleDataset}."""
    from maskrcnn.data.coco import CocoInstanceDataset
    from maskrcnn.data.transforms import build_transforms

    ours = CocoInstanceDataset(
        image_dir, ann_file, transforms=build_transforms("default", train=True, min_size=min_size, max_size=max_size)
    )
    return {"ours": ours, "torchvision": TorchvisionStyleDataset(image_dir, ann_file, min_size, max_size)}


def time_pipelines(datasets: dict, repeats: int = 3, threads: int = 1) -> dict[str, float]:
    """Images per second of each dataset: the median over ``repeats`` passes of (images / summed
    seconds per item).

    Items are interleaved (image i of every pipeline, alternating which goes first, before image
    i + 1) so that a slow stretch of a shared or virtual machine slows every pipeline alike; whole
    passes one after the other let the ratio move between runs on such a machine.
    Runs with ``threads`` torch / OpenCV threads (a DataLoader worker runs torch with one thread)
    and with glibc's malloc thresholds fixed (``bench.allocator``; process-wide, so both
    pipelines get them): with the default, allocation history decides whether per-image buffers
    come as fresh pages, which moves the rates of both pipelines between processes.
    """
    import cv2

    from bench.allocator import keep_freed_memory

    keep_freed_memory()
    old_torch, old_cv2 = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    names = list(datasets)
    num_items = min(len(ds) for ds in datasets.values())
    rates: dict[str, list[float]] = {name: [] for name in names}
    try:
        for ds in datasets.values():  # untimed warm-up (imports, caches)
            ds[0]
        for rep in range(repeats):
            seconds = dict.fromkeys(names, 0.0)
            for i in range(num_items):
                for name in names if (rep * num_items + i) % 2 == 0 else names[::-1]:
                    start = time.perf_counter()
                    datasets[name][i]
                    seconds[name] += time.perf_counter() - start
            for name in names:
                rates[name].append(num_items / seconds[name])
    finally:
        torch.set_num_threads(old_torch)
        cv2.setNumThreads(old_cv2)
    return {name: statistics.median(r) for name, r in rates.items()}


def run_data_benchmark(
    num_images: int = 64,
    repeats: int = 3,
    min_size: int = 800,
    max_size: int = 1333,
    width: int = 640,
    height: int = 480,
    instances: int = 7,
) -> dict[str, float]:
    """Generate the synthetic dataset in a temp dir and return {"ours": img/s, "torchvision": img/s}."""
    with tempfile.TemporaryDirectory() as tmp:
        image_dir, ann_file = make_synthetic_coco(tmp, num_images, width, height, instances)
        return time_pipelines(build_pipelines(image_dir, ann_file, min_size, max_size), repeats)


def run_on_dataset(
    image_dir: str | Path,
    annotation_file: str | Path,
    num_images: int = 64,
    repeats: int = 3,
    min_size: int = 800,
    max_size: int = 1333,
) -> dict[str, float]:
    """Like ``run_data_benchmark`` but on the first ``num_images`` images of an existing COCO-format
    dataset that have at least one non-crowd polygon annotation (e.g. COCO val2017)."""
    data = json.loads(Path(annotation_file).read_text())
    annotated = {
        a["image_id"]
        for a in data["annotations"]
        if not a.get("iscrowd", 0) and isinstance(a.get("segmentation"), list)
    }
    images = [img for img in data["images"] if img["id"] in annotated][:num_images]
    ids = {img["id"] for img in images}
    subset = {**data, "images": images, "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}
    with tempfile.TemporaryDirectory() as tmp:
        ann_file = Path(tmp) / "subset.json"
        ann_file.write_text(json.dumps(subset))
        return time_pipelines(build_pipelines(Path(image_dir), ann_file, min_size, max_size), repeats)


DATA_TARGET = 50.0  # images/s per worker the data pipeline should reach


def data_rows(
    num_images: int, repeats: int, min_size: int = 800, image_dir: str | None = None, annotation_file: str | None = None
) -> list[tuple]:
    """Report row: images/s per worker, ours vs torchvision-style, on synthetic JPEGs or on
    ``image_dir`` + ``annotation_file`` when given."""
    if image_dir is not None:
        rates = run_on_dataset(image_dir, annotation_file, num_images, repeats, min_size)
        images = f"first {num_images} annotated images of {annotation_file}"
    else:
        rates = run_data_benchmark(num_images, repeats, min_size)
        images = f"{num_images} JPEG 640x480, 7 polygons each"
    print(f"data: ours {rates['ours']:.1f}, torchvision-style {rates['torchvision']:.1f} images/s", flush=True)
    verdict = "meets" if rates["ours"] >= DATA_TARGET else "MISSES"
    return [
        (
            "data",
            f"images/s per worker (decode+masks+resize {min_size}+flip)",
            rates["ours"],
            rates["torchvision"],
            f"torchvision CocoDetection + pycocotools masks + v2 Resize/Flip; {images}; "
            f"1 thread; higher is better; {verdict} target >= {DATA_TARGET:.0f}",
        )
    ]
