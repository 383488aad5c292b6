"""The user-facing scripts run from a clean checkout and produce what they promise."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from helpers.config import ROOT

NUTS = ROOT / "tests" / "data" / "nuts"


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
    run("scripts/browse_dataset.py", "--images", str(NUTS / "images"), "--ann", str(NUTS / "annotations.json"),
        "--augmentation", "default", "--min-size", "300", "--max-size", "400", "--num", "3", "--out", str(out))
    pictures = sorted(out.glob("*.png"))
    assert len(pictures) == 3
    for p in pictures:
        array = np.asarray(Image.open(p))
        assert min(array.shape[:2]) == 300  # resized by the augmentation, not the original 600
        # Masks are drawn: the picture is not just the photo (some strongly tinted pixels exist).
        assert array.std() > 10
