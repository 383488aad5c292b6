"""The user-facing scripts run from a clean checkout and produce what they promise."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from helpers.config import ROOT

NUTS = ROOT / "tests" / "assets" / "nuts"


def run(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_generate_shapes_cli(tmp_path):
    run("scripts/generate_shapes.py", "--out", str(tmp_path / "s"), "--train", "6", "--val", "3", "--size", "96")
    train = json.loads((tmp_path / "s" / "train" / "annotations.json").read_text())
    val = json.loads((tmp_path / "s" / "val" / "annotations.json").read_text())
    assert len(train["images"]) == 6 and len(val["images"]) == 3
    assert {c["name"] for c in train["categories"]} == {"square", "circle", "triangle"}
    assert all(len(a["segmentation"][0]) >= 6 for a in train["annotations"])


def test_browse_dataset_renders_augmented_ground_truth(tmp_path):
    out = tmp_path / "browse"
    run(
        "scripts/browse_dataset.py",
        "--images",
        str(NUTS / "images"),
        "--ann",
        str(NUTS / "annotations.json"),
        "--augmentation",
        "default",
        "--min-size",
        "300",
        "--max-size",
        "400",
        "--num",
        "3",
        "--out",
        str(out),
    )
    pictures = sorted(out.glob("*.png"))
    assert len(pictures) == 3
    for p in pictures:
        array = np.asarray(Image.open(p))
        assert min(array.shape[:2]) == 300  # resized by the augmentation, not the original 600
        # Masks are drawn: the picture is not just the photo (some strongly tinted pixels exist).
        assert array.std() > 10


def test_benchmark_cli_prints_one_table_per_run(tmp_path):
    out = tmp_path / "bench.md"
    proc = run(
        "scripts/benchmark.py", "--task", "eval", "--eval-images", "4", "--eval-dets-per-image", "5", "--out", str(out)
    )
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| section | metric | ours | baseline | ours / baseline |")
    assert len(table) == 2 and table[1].startswith("| eval | COCOeval bbox+segm, 4 images [s] |")
    written = out.read_text()
    assert "python scripts/benchmark.py --task eval" in written and all(line in written for line in table)
