"""Smoke tests of scripts/benchmark*.py: every section's core function with tiny settings."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import benchmark  # noqa: E402
import benchmark_data  # noqa: E402
import benchmark_eval  # noqa: E402
import benchmark_memory  # noqa: E402
import benchmark_model  # noqa: E402


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_make_batch_targets_are_valid_for_tiny_images():
    images, targets = benchmark_model.make_batch(64)
    assert [tuple(im.shape) for im in images] == [(3, 64, 64)] * 2
    for t in targets:
        boxes = t["boxes"]
        assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 64
        assert t["masks"].shape[1:] == (64, 64) and t["masks"].sum() > 0


@pytest.mark.slow  # two ResNet-50 Mask R-CNNs: ~15 s idle, a minute on the shared 2-core machine
def test_model_pair_inference_times_are_positive():
    times = benchmark_model.time_model_pair(64, "eval", iters=1, warmup=0)
    assert set(times) == {"ours", "torchvision"}
    assert all(_positive(t) for t in times.values())


@pytest.mark.slow
def test_model_pair_train_times_are_positive():
    times = benchmark_model.time_model_pair(64, "train", iters=1, warmup=0)
    assert all(_positive(t) for t in times.values())


@pytest.mark.slow
def test_model_pair_resnet101_train_times_are_positive():
    times = benchmark_model.time_model_pair(64, "train", iters=1, warmup=0, arch="resnet101")
    assert set(times) == {"ours", "torchvision"} and all(_positive(t) for t in times.values())


def test_model_benchmark_rejects_unknown_arch():
    with pytest.raises(ValueError, match="arch"):
        benchmark_model.reference_state(arch="vgg16")
    assert benchmark.parse_args(["--archs", "resnet50", "resnet101"]).archs == ["resnet50", "resnet101"]
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--archs", "vgg16"])


def test_model_pair_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        benchmark_model.time_model_pair(64, "predict", state={})


def test_synthetic_coco_and_both_pipelines_agree_on_shapes(tmp_path):
    image_dir, ann_file = benchmark_data.make_synthetic_coco(tmp_path, num_images=2, instances=3)
    assert len(list(image_dir.glob("*.jpg"))) == 2
    pipelines = benchmark_data.build_pipelines(image_dir, ann_file, min_size=96, max_size=160)
    for name, ds in pipelines.items():
        image, target = ds[0]
        assert image.dtype == torch.float32 and tuple(image.shape) == (3, 96, 128), name
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert len(target["labels"]) == 3 and tuple(target["masks"].shape) == (3, 96, 128), name
    rates = benchmark_data.time_pipelines(pipelines, repeats=1)
    assert set(rates) == {"ours", "torchvision"} and all(_positive(r) for r in rates.values())


def test_data_benchmark_runs_on_an_existing_coco_dataset():
    nuts = Path(__file__).parent / "data" / "nuts"
    rates = benchmark_data.run_on_dataset(nuts / "images", nuts / "annotations.json", num_images=2,
                                          repeats=1, min_size=120, max_size=200)
    assert set(rates) == {"ours", "torchvision"} and all(_positive(r) for r in rates.values())


def test_eval_benchmark_backends_agree():
    result = benchmark_eval.run_eval_benchmark(num_images=10, dets_per_image=20)
    assert result["num_images"] == 10 and result["num_detections"] == 200
    assert all(_positive(s) for s in result["seconds"].values())
    assert result["max_metric_diff"] < 1e-6


def test_paste_case_in_process_reports_output_size():
    r = benchmark_memory.paste_case("ours", num=4, width=64, height=48)
    assert r["output_mb"] == pytest.approx(4 * 64 * 48 * 4 / 2**20)
    assert _positive(r["peak_mb"]) and _positive(r["seconds"]) and r["delta_mb"] >= 0
    with pytest.raises(ValueError, match="impl"):
        benchmark_memory.paste_case("detectron", num=1, width=8, height=8)


def test_main_writes_one_table_with_memory_rows(tmp_path, capsys):
    out = tmp_path / "bench.md"
    table = benchmark.main(["--skip", "model,data,eval", "--mem-instances", "5", "--mem-sizes", "64x48",
                            "--out", str(out)])
    lines = table.splitlines()
    assert lines[0].startswith("| section | metric | ours | baseline |")
    rows = [line.split(" | ") for line in lines[2:]]
    assert [r[0] for r in rows] == ["| memory", "| memory"]
    assert all(float(r[2]) >= 0 and float(r[3]) >= 0 for r in rows)
    written = out.read_text()
    assert "CPU:" in written and "torchvision" in written and table in written
    assert "paste 5 masks into 64x48" in capsys.readouterr().out


def test_to_markdown_ratio_and_cli_validation():
    table = benchmark.to_markdown([("model", "x [s]", 2.0, 4.0, "n")])
    assert table.splitlines()[2] == "| model | x [s] | 2.00 | 4.00 | 0.50 | n |"
    args = benchmark.parse_args(["--quick"])
    assert args.sizes == [64] and args.eval_images == 200 and args.iters == 1
    full = benchmark.parse_args([])
    assert full.sizes == [512, 800] and full.eval_images == 5000 and full.threads == 2
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--skip", "model,gpu"])
