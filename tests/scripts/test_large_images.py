"""The generated large-image set (``bench.large_images``, ``--dataset large``) at a small size: polygon
objects of the requested sizes, both orientations, COCO fields evaluation needs, deterministic."""

import json

import numpy as np
from PIL import Image

from bench.datasets import DATASETS
from bench.large_images import generate_large_images
from maskrcnn.data.coco import CocoInstanceDataset


def test_small_large_images_set(tmp_path):
    kwargs = dict(num_train=3, num_val=1, image_size=(400, 300), instances_per_image=(15, 25), seed=5)
    paths = generate_large_images(tmp_path / "large", **kwargs)
    coco = json.loads(open(paths["train"]["annotation_file"]).read())
    assert [(i["width"], i["height"]) for i in coco["images"]] == [(400, 300), (400, 300), (300, 400)]
    per_image = np.bincount([a["image_id"] for a in coco["annotations"]])[1:]
    assert per_image.min() >= 10 and per_image.max() <= 25
    assert {a["category_id"] for a in coco["annotations"]} == {1, 2}
    for a in coco["annotations"]:
        assert isinstance(a["segmentation"], list) and len(a["segmentation"][0]) >= 8  # a polygon
        assert a["area"] > 0 and len(a["bbox"]) == 4 and a["iscrowd"] == 0
        xy = np.asarray(a["segmentation"][0]).reshape(-1, 2)
        across = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1)).max()  # the longest chord
        assert 10 * 0.75 <= across <= 40 + 0.1
    first = coco["images"][0]
    assert Image.open(f"{paths['train']['image_dir']}/{first['file_name']}").format == "JPEG"
    # objects never overlap, and every annotation loads as one instance
    _, target = CocoInstanceDataset(**paths["val"], for_evaluation=True)[0]
    assert target["masks"].sum(0).max() == 1 and len(target["boxes"]) >= 10
    # deterministic for the seed, and not regenerated when already there
    before = open(paths["train"]["annotation_file"]).read()
    stamp = (tmp_path / "large" / "train" / "0000.jpg").stat().st_mtime_ns
    assert generate_large_images(tmp_path / "large", **kwargs) == paths
    assert (tmp_path / "large" / "train" / "0000.jpg").stat().st_mtime_ns == stamp
    again = generate_large_images(tmp_path / "again", **kwargs)
    assert open(again["train"]["annotation_file"]).read() == before
    assert "large" in DATASETS


def test_the_training_comparison_also_scores_each_network_of_ours_sliced(tmp_path, monkeypatch):
    from bench import training
    from bench.reference_loop import TrainSettings
    from helpers.scripts import load_script
    from helpers.tiny_model import build_tiny_model
    from maskrcnn.inference.slice_options import SliceOptions

    paths = generate_large_images(tmp_path / "large", num_train=1, num_val=1, image_size=(256, 192))
    monkeypatch.setattr(training, "train_ours", lambda *args, **kwargs: build_tiny_model(num_classes=2))
    results = training.compare(
        TrainSettings(num_classes=2, detections_per_img=50),
        paths["train"],
        paths["val"],
        [0],
        {"ours": []},
        reference=False,
        log=lambda line: None,
        eval_slice=SliceOptions(96),
    )
    assert [r.pipeline for r in results] == ["ours", "ours + sliced eval 96"]
    assert all(set(r.metrics) >= {"bbox_AP", "segm_AP"} for r in results)
    cli = load_script("benchmark")
    assert cli.parse_args(["--task", "train", "--dataset", "large", "--eval-slice", "640"]).eval_slice == 640
