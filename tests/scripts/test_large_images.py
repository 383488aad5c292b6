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
    tiny = build_tiny_model(num_classes=2)
    # a plain run: the weights after the last step are the network's own
    monkeypatch.setattr(training, "train_ours", lambda *args, **kwargs: (tiny, tiny.state_dict()))
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


def test_the_training_comparison_scores_tta_and_the_raw_weights_of_an_ema_run(tmp_path, monkeypatch):
    """--eval-tta rows run the TTA wrapper on the same network; an EMA variant also scores the raw
    weights the callback kept (``FinalWeights``, returned by ``train_ours``), loaded into the same network."""
    import torch

    from bench import training
    from bench.reference_loop import TrainSettings
    from helpers.scripts import load_script
    from helpers.tiny_model import build_tiny_model

    paths = generate_large_images(tmp_path / "large", num_train=1, num_val=1, image_size=(256, 192))
    averaged = build_tiny_model(num_classes=2)
    raw = {k: v + 0.01 if v.is_floating_point() else v for k, v in averaged.state_dict().items()}

    def fake_train(settings, train_split, val_split, seed, overrides=(), **kwargs):
        # what the callback keeps at the last step: the network's own weights unless EMA replaced them
        return averaged, raw if "callbacks=ema" in overrides else averaged.state_dict()

    monkeypatch.setattr(training, "train_ours", fake_train)
    results = training.compare(
        TrainSettings(num_classes=2, detections_per_img=50),
        paths["train"],
        paths["val"],
        [0],
        {"ours": [], "ema": ["callbacks=ema"]},
        reference=False,
        log=lambda line: None,
        eval_tta=["flip"],
    )
    assert [r.pipeline for r in results] == [
        "ours",
        "ours + tta flip",
        "ema",
        "ema + tta flip",
        "ema raw weights",
        "ema raw weights + tta flip",
    ]
    assert all(r.eval_seconds is not None and r.eval_seconds > 0 for r in results)
    assert all(torch.equal(v, raw[k]) for k, v in averaged.state_dict().items())  # the raw row's weights
    from bench.training_report import summary_table

    table = summary_table(results)
    assert "| ema raw weights | 0 |" in table and table.splitlines()[0].endswith("| eval s |")
    cli = load_script("benchmark")
    assert cli.parse_args(["--task", "train", "--dataset", "nuts", "--eval-tta", "flip", "flip_scales"]).eval_tta == [
        "flip",
        "flip_scales",
    ]


def test_final_weights_keeps_the_weights_after_the_last_step():
    from types import SimpleNamespace

    import torch

    from bench.training import FinalWeights

    net = torch.nn.Linear(2, 2)
    module = SimpleNamespace(net=net)
    callback = FinalWeights()
    callback.on_train_batch_end(SimpleNamespace(max_steps=3, global_step=2), module)
    assert callback.state is None  # not the last step yet
    assert FinalWeights().state is None  # nothing shared between instances (runs)
    callback.on_train_batch_end(SimpleNamespace(max_steps=3, global_step=3), module)
    kept = callback.state
    assert kept is not None and torch.equal(kept["weight"], net.weight)
    with torch.no_grad():
        net.weight.add_(1.0)  # a later change (the EMA swap) leaves the kept copy alone
    assert not torch.equal(kept["weight"], net.weight)
