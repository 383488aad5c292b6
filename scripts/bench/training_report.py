"""``--task train``: run the training comparison (``training.compare``), print its table, keep a record."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch

from bench.reference_loop import TrainSettings
from bench.training import RunResult, compare
from maskrcnn.inference.slice_options import SliceOptions


def run_training_comparison(
    settings: TrainSettings,
    splits: dict,
    seeds: list[int],
    variants: dict[str, list[str]],
    reference: bool,
    dataset_label: str,
    command: str,
    out: str | None = None,
    eval_slice: SliceOptions | None = None,
    eval_tta: list[str] = (),
) -> str:
    """Train and evaluate every run, print a header line (settings, machine, time) and the table.

    Args:
        splits: {"train": {"image_dir", "annotation_file"}, "val": {...}}.
        variants: name -> extra Hydra overrides of a run of ours.
        dataset_label: how the header names the data.
        command: the command line, written with the table.
        out: when given, the header, command and table are appended to this markdown file and one
            json line per run (settings + result) to the same name with suffix ``.jsonl``.
        eval_slice: also evaluate each network of ours by sliced inference (``training.compare``).
        eval_tta: also evaluate each network of ours with these ``tta`` options (``training.compare``).

    Returns:
        the markdown table (``summary_table``).
    """
    start = time.time()
    results = compare(
        settings,
        splits["train"],
        splits["val"],
        seeds,
        variants,
        reference=reference,
        eval_slice=eval_slice,
        eval_tta=eval_tta,
    )
    table = summary_table(results)
    header = (
        f"dataset {dataset_label}, {settings.steps} steps, sizes {list(settings.min_sizes)} max "
        f"{settings.max_size}, seeds {seeds}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}, {time.time() - start:.0f} s in all"
    )
    print("\n" + header + "\n" + table)
    if out:
        with open(out, "a", encoding="utf-8") as f:
            f.write(f"\n{header}\n`{command}`\n\n{table}\n")
        with open(Path(out).with_suffix(".jsonl"), "a", encoding="utf-8") as f:
            for r in results:
                f.write(json.dumps({"settings": asdict(settings), **asdict(r)}) + "\n")
    return table


def _value(r: RunResult, key: str) -> float:
    return 0.0 if r.metrics is None else r.metrics[key]  # a diverged run detects nothing


def summary_table(results: list[RunResult], baseline: str = "torchvision loop") -> str:
    """Markdown table: per pipeline, mean over seeds (and each seed), the ratio to the baseline and
    the mean evaluation time in seconds (of all validation images, one at a time).

    A diverged run counts as AP 0 in the mean and shows as "NaN@step" in the per-seed column.
    """
    names = list(dict.fromkeys(r.pipeline for r in results))
    mean = {
        n: {
            k: statistics.fmean(_value(r, k) for r in results if r.pipeline == n)
            for k in ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50")
        }
        for n in names
    }
    lines = [
        "| pipeline | seeds | box AP (AP50) | mask AP (AP50) | mask AP per seed | mask AP / baseline | eval s |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in names:
        runs = [r for r in results if r.pipeline == n]
        per_seed = ", ".join(f"{r.metrics['segm_AP']:.3f}" if r.metrics else _diverged_at(r) for r in runs)
        ratio = (
            f"{mean[n]['segm_AP'] / mean[baseline]['segm_AP']:.2f}"
            if baseline in mean and mean[baseline]["segm_AP"] > 0
            else "-"
        )
        m = mean[n]
        timed = [r.eval_seconds for r in runs if r.eval_seconds is not None]
        eval_s = f"{statistics.fmean(timed):.1f}" if timed else "-"
        lines.append(
            f"| {n} | {', '.join(str(r.seed) for r in runs)} | {m['bbox_AP']:.3f} ({m['bbox_AP50']:.3f}) | "
            f"{m['segm_AP']:.3f} ({m['segm_AP50']:.3f}) | {per_seed} | {ratio} | {eval_s} |"
        )
    return "\n".join(lines)


def _diverged_at(r: RunResult) -> str:
    step = re.search(r"step (\d+)", r.error or "")
    return f"NaN at step {step.group(1)}" if step else "NaN"
