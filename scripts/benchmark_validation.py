"""Time the annotation check run at setup (``validate_coco``) on a synthetic COCO-like json.

The json mimics COCO instances: ~7 annotations per image, 1-2 polygons of 8-40 vertices each,
1% crowd regions as uncompressed RLE, and optionally a share of compressed-RLE instances (as in
LVIS-style exports). No image files are needed: only the json check is timed.

    python scripts/benchmark_validation.py --annotations 100000 --compressed 0.1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from maskrcnn.data.checks.annotation_file import validate_coco


def make_coco(num_annotations: int, compressed_share: float, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    num_images = max(1, num_annotations // 7)
    images = [{"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "width": 640, "height": 480} for i in range(num_images)]
    blob = np.zeros((480, 640), np.uint8, order="F")
    blob[100:220, 200:380] = 1
    compressed = mask_utils.encode(blob)["counts"].decode("ascii")
    flat = blob.ravel(order="F")
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]])))
    uncompressed = np.diff(np.concatenate([[0], changes])).tolist()
    uncompressed[-1] = flat.size - sum(uncompressed[:-1])
    annotations = []
    for k in range(num_annotations):
        image_id = int(rng.integers(1, num_images + 1))
        ann = {
            "id": k + 1,
            "image_id": image_id,
            "category_id": int(rng.integers(1, 81)),
            "iscrowd": 0,
            "area": 1000.0,
            "bbox": [200.0, 100.0, 180.0, 120.0],
        }
        draw = rng.random()
        if draw < 0.01:
            ann.update(iscrowd=1, segmentation={"size": [480, 640], "counts": uncompressed})
        elif draw < 0.01 + compressed_share:
            ann["segmentation"] = {"size": [480, 640], "counts": compressed}
        else:
            polys = []
            for _ in range(int(rng.integers(1, 3))):
                n = int(rng.integers(8, 41))
                angles = np.sort(rng.uniform(0, 2 * np.pi, n))
                r = rng.uniform(10, 100)
                cx, cy = rng.uniform(100, 540), rng.uniform(100, 380)
                polys.append(np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1).round(2).ravel().tolist())
            ann["segmentation"] = polys
        annotations.append(ann)
    categories = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in range(1, 81)]
    return {"images": images, "annotations": annotations, "categories": categories}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", type=int, default=100_000)
    parser.add_argument("--compressed", type=float, default=0.1, help="share of compressed-RLE instances")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    data = make_coco(args.annotations, args.compressed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "instances.json"
        path.write_text(json.dumps(data))
        size_mb = path.stat().st_size / 1e6
        load, check, check_cpu = [], [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            with open(path, encoding="utf-8") as f:
                parsed = json.load(f)
            load.append(time.perf_counter() - start)
            start, start_cpu = time.perf_counter(), time.process_time()
            index = validate_coco(parsed, str(path))
            check.append(time.perf_counter() - start)
            check_cpu.append(time.process_time() - start_cpu)
    kept = sum(map(len, index.instances.values()))
    # CPU time is the steadier number on a shared machine; numpy may use several threads for none of this.
    print(
        "| annotations | compressed RLE | json MB | json.load s | validate_coco s | validate_coco CPU s | "
        "CPU us / annotation | kept | skipped |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.annotations} | {args.compressed:.0%} | {size_mb:.0f} | {statistics.median(load):.2f} | "
        f"{statistics.median(check):.2f} | {statistics.median(check_cpu):.2f} | "
        f"{1e6 * statistics.median(check_cpu) / args.annotations:.1f} | {kept} | {len(index.skipped)} |"
    )


if __name__ == "__main__":
    main()
