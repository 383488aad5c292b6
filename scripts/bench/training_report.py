"""``--task train``: run the training comparison (``training.compare``), print its table, keep a record."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch

from bench.reference_loop import TrainSettings
from bench.training import compare, summary_table
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
        the markdown table (``training.summary_table``).
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
