"""Smoke tests of the benchmark: every task's measuring code (scripts/bench/) with tiny
settings, and scripts/benchmark.py's options and table."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bench import data_pipeline, eval_backends, model_peak_rss, model_speed, peak_memory
from bench.report import to_markdown
from helpers.scripts import load_script

NUTS = Path(__file__).resolve().parents[1] / "assets" / "nuts"


@pytest.fixture(scope="module")
def cli():
    """scripts/benchmark.py as a module."""
    return load_script("benchmark")


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _table_rows(table: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def test_make_batch_targets_are_valid_for_tiny_images():
    images, targets = model_speed.make_batch(64)
    assert [tuple(im.shape) for im in images] == [(3, 64, 64)] * 2
    for t in targets:
        boxes = t["boxes"]
        assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 64
        assert t["masks"].shape[1:] == (64, 64) and t["masks"].sum() > 0


@pytest.mark.slow  # two ResNet-50 Mask R-CNNs: ~15 s idle, a minute on the shared 2-core machine
def test_model_pair_inference_times_are_positive():
    times = model_speed.time_model_pair(64, "eval", iters=1, warmup=0)
    assert set(times) == {"ours", "torchvision"}
    assert all(_positive(t) for t in times.values())


@pytest.mark.slow
def test_model_pair_train_times_are_positive():
    times = model_speed.time_model_pair(64, "train", iters=1, warmup=0)
    assert all(_positive(t) for t in times.values())


@pytest.mark.slow
def test_model_rows_add_the_channels_last_train_rows():
    rows = model_speed.model_rows([64], iters=1, warmup=0, device="cpu", amp=None)
    assert [r[1] for r in rows] == [
        "R50-FPN train step [s/iter], 2 img 64x64",
        "R50-FPN train step [s/iter] (model.channels_last=true), 2 img 64x64",
        "R50-FPN train step [s/iter] (model.channels_last=true model.roi_align.backward_threads=2), 2 img 64x64",
        "R50-FPN inference [s/image], 2 img 64x64",
    ]
    assert all(_positive(r[2]) and _positive(r[3]) for r in rows)
    assert rows[0][3] == rows[1][3] == rows[2][3]  # all against the same torchvision timing


@pytest.mark.slow
def test_model_pair_resnet101_train_times_are_positive():
    times = model_speed.time_model_pair(64, "train", iters=1, warmup=0, arch="resnet101")
    assert set(times) == {"ours", "torchvision"} and all(_positive(t) for t in times.values())


@pytest.mark.slow  # four spawned processes, each building a ResNet-50 Mask R-CNN
def test_model_peak_rss_rows_come_from_fresh_processes():
    rows = model_peak_rss.model_peak_rss_rows([64], iters=1, warmup=0, threads=1)
    assert [r[1] for r in rows] == [
        "R50-FPN train step [s/iter], 2 img 64x64",
        "R50-FPN peak RSS train [MB], 2 img 64x64",
        "R50-FPN inference [s/image], 2 img 64x64",
        "R50-FPN peak RSS eval [MB], 2 img 64x64",
    ]
    assert all(_positive(r[2]) and _positive(r[3]) for r in rows)
    assert rows[1][2] > 100 and rows[1][3] > 100  # a whole interpreter with torch and a model


def test_a_fresh_process_that_dies_is_an_error_not_a_hang(tmp_path):
    with pytest.raises(RuntimeError, match="benchmark worker ours/train died with exit code 1"):
        model_peak_rss.measure_in_fresh_process("ours", "train", 64, str(tmp_path / "missing.pth"), threads=1)


def test_model_benchmark_rejects_unknown_arch(cli):
    with pytest.raises(ValueError, match="arch"):
        model_speed.reference_state(arch="vgg16")
    assert cli.parse_args(["--archs", "resnet50", "resnet101"]).archs == ["resnet50", "resnet101"]
    with pytest.raises(SystemExit):
        cli.parse_args(["--archs", "vgg16"])


def test_model_pair_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        model_speed.time_model_pair(64, "predict", state={})


def test_synthetic_coco_and_both_pipelines_agree_on_shapes(tmp_path):
    image_dir, ann_file = data_pipeline.make_synthetic_coco(tmp_path, num_images=2, instances=3)
    assert len(list(image_dir.glob("*.jpg"))) == 2
    pipelines = data_pipeline.build_pipelines(image_dir, ann_file, min_size=96, max_size=160)
    for name, ds in pipelines.items():
        image, target = ds[0]
        assert image.dtype == torch.float32 and tuple(image.shape) == (3, 96, 128), name
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert len(target["labels"]) == 3 and tuple(target["masks"].shape) == (3, 96, 128), name
    rates = data_pipeline.time_pipelines(pipelines, repeats=1)
    assert set(rates) == {"ours", "torchvision"} and all(_positive(r) for r in rates.values())


def test_data_benchmark_runs_on_an_existing_coco_dataset():
    rates = data_pipeline.run_on_dataset(
        NUTS / "images", NUTS / "annotations.json", num_images=2, repeats=1, min_size=120, max_size=200
    )
    assert set(rates) == {"ours", "torchvision"} and all(_positive(r) for r in rates.values())


def test_data_rows_name_the_dataset_and_the_size():
    (row,) = data_pipeline.data_rows(
        2, 1, min_size=120, image_dir=str(NUTS / "images"), annotation_file=str(NUTS / "annotations.json")
    )
    section, metric, ours, baseline, notes = row
    assert section == "data" and metric == "images/s per worker (decode+masks+resize 120+flip)"
    assert _positive(ours) and _positive(baseline) and "first 2 annotated images of" in notes


def test_eval_benchmark_backends_agree():
    result = eval_backends.run_eval_benchmark(num_images=10, dets_per_image=20)
    assert result["num_images"] == 10 and result["num_detections"] == 200
    assert all(_positive(s) for s in result["seconds"].values())
    assert result["max_metric_diff"] < 1e-6
    (row,) = eval_backends.eval_rows(num_images=10, dets_per_image=20)
    assert row[:2] == ("eval", "COCOeval bbox+segm, 10 images [s]") and "200 detections, 70 gt" in row[4]
    assert f"bbox/segm AP {result['metrics']['faster_coco_eval']['bbox_AP']:.4f}" in row[4]


def test_paste_case_in_process_reports_output_size():
    r = peak_memory.paste_case("ours", num=4, width=64, height=48)
    assert r["output_mb"] == pytest.approx(4 * 64 * 48 * 4 / 2**20)
    assert _positive(r["peak_mb"]) and _positive(r["seconds"]) and r["delta_mb"] >= 0
    with pytest.raises(ValueError, match="impl"):
        peak_memory.paste_case("detectron", num=1, width=8, height=8)


@pytest.mark.slow  # builds a ResNet-18 Mask R-CNN in a fresh process and runs it at 800 px
def test_predict_rows_report_the_peak_of_src_predict():
    (row,) = peak_memory.predict_rows(320, 240, threads=2, thresholds=(0.0,))
    assert row[1] == "src/predict.py on one 320x240 JPEG, score_thresh=0.0: peak RSS [MB]" and row[3] is None
    assert row[2] > 100 and "100 detections kept" in row[4]


def test_main_writes_one_table_with_memory_rows(cli, tmp_path, capsys):
    out = tmp_path / "bench.md"
    table = cli.main(["--task", "memory", "--mem-instances", "5", "--mem-sizes", "64x48", "--out", str(out)])
    lines = table.splitlines()
    assert lines[0].startswith("| section | metric | ours | baseline |")
    rows = _table_rows(table)
    assert [r[0] for r in rows] == ["memory", "memory"]
    assert all(float(r[2]) >= 0 and float(r[3]) >= 0 for r in rows)
    written = out.read_text()
    assert "python scripts/benchmark.py --task memory" in written
    assert "CPU:" in written and "torchvision" in written and table in written
    assert "paste 5 masks into 64x48" in capsys.readouterr().out


def test_skip_and_task_select_the_same_sections(cli, monkeypatch):
    calls = []
    for task in cli.TABLE_TASKS:
        monkeypatch.setitem(
            cli.TABLE_TASKS, task, lambda a, task=task: calls.append(task) or [(task, "m", 1.0, 2.0, "")]
        )
    cli.main(["--skip", "model,memory"])
    assert calls == ["data", "eval"]
    calls.clear()
    table = cli.main(["--task", "eval", "data"])
    assert calls == ["data", "eval"] and [r[0] for r in _table_rows(table)] == ["data", "eval"]


def test_to_markdown_ratio_and_cli_validation(cli):
    table = to_markdown([("model", "x [s]", 2.0, 4.0, "n"), ("memory", "y [MB]", 1500.0, None, "no baseline")])
    assert table.splitlines()[2] == "| model | x [s] | 2.00 | 4.00 | 0.50 | n |"
    assert table.splitlines()[3] == "| memory | y [MB] | 1500 | - | n/a | no baseline |"
    args = cli.parse_args(["--quick"])
    assert args.sizes == [64] and args.eval_images == 200 and args.iters == 1
    full = cli.parse_args([])
    assert full.sizes == [512, 800] and full.eval_images == 5000 and full.threads == 2
    assert full.task == ["model", "data", "eval", "memory"]
    for bad in (
        ["--skip", "model,gpu"],
        ["--task", "gpu"],
        ["--data-image-dir", "x"],
        ["--amp", "bf16"],
        ["--task", "train", "model", "--dataset", "nuts"],
        ["--task", "train"],
    ):
        with pytest.raises(SystemExit):
            cli.parse_args(bad)
    train = cli.parse_args(["--task", "train", "--dataset", "nuts", "--seeds", "0"])
    assert train.threads is None and train.steps == 150 and train.work_dir == "outputs/compare_training"


def test_train_task_trains_evaluates_and_records_each_run(cli, tmp_path, capsys):
    out = tmp_path / "compare.md"
    table = cli.main(
        [
            "--task",
            "train",
            "--dataset",
            "nuts",
            "--seeds",
            "0",
            "--steps",
            "2",
            "--no-reference",
            "--min-sizes",
            "64",
            "--max-size",
            "96",
            "--detections-per-img",
            "10",
            "--work-dir",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ]
    )
    assert table.splitlines()[0].startswith("| pipeline | seeds | box AP (AP50) | mask AP (AP50) |")
    (row,) = _table_rows(table)
    assert row[0] == "ours" and row[1] == "0"
    assert "dataset nuts, 2 steps, sizes [64] max 96, seeds [0]" in capsys.readouterr().out
    assert table in out.read_text() and "--task train" in out.read_text()
    assert len(out.with_suffix(".jsonl").read_text().splitlines()) == 1


def test_inference_task_times_torchvision_and_the_fast_path_and_compares_detections(cli, capsys):
    table = cli.main(["--task", "inference", "--size", "96", "--iters", "1", "--threads", "1"])
    rows = _table_rows(table)
    names = [r[0] for r in rows]
    assert names[0].startswith("torchvision") and "ours, eager" in names
    assert any(n.startswith("ours, fast") for n in names)
    assert all(_positive(float(r[1])) for r in rows)  # ms/image
    assert rows[0][2] == "1.00"  # ratios are to torchvision
    # calibrated predictors: the random model detects at the default score threshold, like a trained one
    assert int(rows[0][3]) > 0
    assert rows[0][9] == "–"  # torchvision is the reference of the float64 columns (9-11)
    for row in rows[1:]:
        if "bf16" in row[0]:  # reported, not required to match; not rebuilt in float64
            assert row[9:12] == ["–", "–", "–"]
            continue
        # float32: same detections within 1e-3 px / 1e-4 / 1e-3; float64: the rewrites are exact algebra
        assert row[3] == rows[0][3] and row[4] == "True" and row[8] == "True", row
        assert row[9] == "True" and float(row[10]) < 1e-9 and float(row[11]) < 1e-12, row
    assert "machine at start" in capsys.readouterr().out
