"""The model benchmark's GPU-run options (batch size, compiled and channels_last variants,
trained-like weights with detections compared to torchvision's) and the data benchmark's
item-interleaved timing, on the CPU with tiny images."""

from __future__ import annotations

import re

import pytest
import torch

from bench import data_pipeline, model_speed
from helpers.scripts import load_script


@pytest.fixture(scope="module")
def cli():
    return load_script("benchmark")


def test_make_batch_gives_the_asked_number_of_images_and_alternating_instances():
    images, targets = model_speed.make_batch(48, batch=3)
    assert [tuple(im.shape) for im in images] == [(3, 48, 48)] * 3
    assert [len(t["labels"]) for t in targets] == [3, 1, 3]
    assert torch.equal(model_speed.make_batch(48, batch=3)[0][2], images[2])  # seeded
    assert torch.equal(model_speed.make_batch(48)[0][1], model_speed.make_batch(48, batch=2)[0][1])


def test_variants_per_mode_and_device():
    ms = model_speed
    assert ms._impls("train", "cpu", False) == ("ours", "torchvision", ms.CHANNELS_LAST, ms.CHANNELS_LAST_THREADS)
    # threaded RoIAlign is a CPU kernel: no such row on a GPU
    assert ms._impls("train", "cuda", False) == ("ours", "torchvision", ms.CHANNELS_LAST)
    assert ms._impls("train", "cuda", True) == (
        "ours",
        "torchvision",
        ms.CHANNELS_LAST,
        ms.COMPILE,
        ms.CHANNELS_LAST_COMPILE,
    )
    assert ms._impls("eval", "cpu", False) == ("ours", "torchvision")
    assert ms._impls("eval", "cuda", True) == ("ours", "torchvision", ms.CHANNELS_LAST, ms.COMPILE)


def test_compiled_variants_compile_the_heavy_parts_only(monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(k.get("dynamic")))
    state = model_speed.reference_state(arch="resnet50")
    model, _ = model_speed.build_model(model_speed.CHANNELS_LAST_COMPILE, 64, state)
    # backbone and RPN head (fixed image size), then box head, box predictor, mask head, mask
    # predictor for any number of RoIs
    assert compiled == [None, None, True, True, True, True]
    assert model.backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    compiled.clear()
    model_speed.build_model(model_speed.CHANNELS_LAST, 64, state)
    assert compiled == []


def test_trained_like_weights_detect_and_ours_matches_torchvision_exactly():
    state = model_speed.reference_state(arch="resnet50", trained_like_size=96)
    plain = model_speed.reference_state(arch="resnet50")
    assert state.keys() == plain.keys()
    assert not torch.equal(
        state["roi_heads.box_predictor.cls_score.weight"], plain["roi_heads.box_predictor.cls_score.weight"]
    )  # calibrated
    detections: dict = {}
    times = model_speed.time_model_pair(
        96,
        "eval",
        iters=1,
        warmup=0,
        state=state,
        batch=2,
        impls=("ours", "torchvision", model_speed.CHANNELS_LAST),
        detections=detections,
    )
    assert set(times) == set(detections) and all(len(d) == 2 for d in detections.values())
    text = model_speed.detection_differences(detections)
    assert set(text) == {"ours", model_speed.CHANNELS_LAST}
    # same arithmetic as torchvision: equal boxes and scores, same labels, detections found
    match = re.fullmatch(
        r"boxes <= 0 px, scores <= 0, masks <= (\S+), same labels, (\d+)-(\d+) detections/image", text["ours"]
    )
    assert match, text["ours"]
    assert float(match[1]) < 1e-5 and int(match[2]) > 0
    assert "same labels" in text[model_speed.CHANNELS_LAST]  # another float32 summation order


def test_cli_model_options(cli):
    args = cli.parse_args(["--task", "model", "--batch", "2", "8", "--model-compile", "--trained-like"])
    assert args.batch == [2, 8] and args.model_compile and args.trained_like
    assert cli.parse_args([]).batch == [2] and not cli.parse_args([]).model_compile
    for bad in (["--batch", "0"], ["--model-peak-rss", "--batch", "8"], ["--model-peak-rss", "--trained-like"]):
        with pytest.raises(SystemExit):
            cli.parse_args(bad)


class _Recorder:
    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int):
        self.log.append((self.name, i))
        return i


def test_data_pipelines_are_timed_item_by_item_alternating_which_goes_first(monkeypatch):
    from bench import allocator

    log: list = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: log.append("malloc thresholds") or True)
    rates = data_pipeline.time_pipelines({"a": _Recorder("a", log), "b": _Recorder("b", log)}, repeats=2)
    assert set(rates) == {"a", "b"} and all(r > 0 for r in rates.values())
    assert log[0] == "malloc thresholds"  # fixed before anything is timed
    timed = log[3:]  # after one untimed warm-up item each
    assert timed == [
        ("a", 0),
        ("b", 0),
        ("b", 1),
        ("a", 1),
        ("a", 2),
        ("b", 2),
        ("b", 0),
        ("a", 0),
        ("a", 1),
        ("b", 1),
        ("b", 2),
        ("a", 2),
    ]


@pytest.mark.slow  # inductor builds C++ kernels for a ResNet-50 Mask R-CNN: a minute or more on 2 cores
def test_compiled_variant_runs_other_roi_counts_without_recompiling():
    """The RoI heads see another number of RoIs / detections on every call. Compiled for dynamic
    shapes from the start, the first inference call builds every graph that later counts need
    (compiled as static, the first new count would build another one). Also: the compiled model
    gives torchvision's detections and still trains."""
    import torch._dynamo

    torch._dynamo.reset()
    state = model_speed.reference_state(arch="resnet50", trained_like_size=96)
    model, loss_fn = model_speed.build_model(model_speed.COMPILE, 96, state)
    reference, _ = model_speed.build_model("torchvision", 96, state)
    images, targets = model_speed.make_batch(96, batch=2)
    model_speed.infer(model, images, "cpu", None)  # builds the inference graphs (100 detections)
    with torch._dynamo.config.patch(error_on_recompile=True):  # a recompile raises instead of building a graph
        for kept in (37, 64):  # another number of detections for the mask head
            model.roi_heads.detections_per_img = reference.roi_heads.detections_per_img = kept
            out = model_speed.infer(model, images, "cpu", None)
            expected = model_speed.infer(reference, images, "cpu", None)
            assert [len(d["boxes"]) for d in out] == [kept, kept]
            for ours, theirs in zip(out, expected, strict=True):
                assert torch.equal(ours["labels"], theirs["labels"])
                torch.testing.assert_close(ours["boxes"], theirs["boxes"], atol=1e-3, rtol=0)
                torch.testing.assert_close(ours["masks"], theirs["masks"], atol=1e-4, rtol=0)
    model_speed.timed_step(model, loss_fn, images, targets, "train", "cpu", None, seed=0)
    assert all(p.grad is not None for p in model.roi_heads.mask_head.parameters())
