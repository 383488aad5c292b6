"""Train the plain torchvision loop and our pipeline side by side and print both APs.

    python scripts/compare_training.py --dataset nuts --seeds 0 1 2
    python scripts/compare_training.py --dataset cells --steps 300 --variant "grouping off=data.aspect_ratio_grouping=false"
    python scripts/compare_training.py --dataset nuts --variant "tv-style resize=augmentation=hflip model.transform.resize_in_training=true model.transform.min_size=[384,512,640]"
    python scripts/compare_training.py --train-dir D --train-ann A.json --val-dir D2 --val-ann B.json --num-classes 5

Every run trains R18-FPN from scratch with the same settings on both sides (see
``maskrcnn.benchmark.reference_loop.TrainSettings``) and is evaluated on the final weights by the
same evaluator. ``--variant "name=override override ..."`` adds a run of ours with extra Hydra
overrides (separated by spaces; choosing another option of a group drops the matched settings'
keys of that group).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from maskrcnn.benchmark import datasets
from maskrcnn.benchmark.reference_loop import TrainSettings
from maskrcnn.benchmark.training import compare, summary_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("nuts", "cells"), help="a built-in dataset (or give --train-*/--val-*)")
    p.add_argument("--train-dir"), p.add_argument("--train-ann"), p.add_argument("--val-dir"), p.add_argument("--val-ann")
    p.add_argument("--num-classes", type=int, help="foreground classes (with --train-*)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--min-sizes", type=int, nargs="+", default=list(TrainSettings.min_sizes),
                   help="training shortest-edge choices; the last one is the evaluation size")
    p.add_argument("--max-size", type=int, default=TrainSettings.max_size)
    p.add_argument("--anchor-sizes", type=int, nargs=5, default=[32, 64, 128, 256, 512])
    p.add_argument("--detections-per-img", type=int, default=100)
    p.add_argument("--no-reference", action="store_true", help="skip the torchvision loop")
    p.add_argument("--no-default", action="store_true", help="skip the run of ours without extra overrides")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDE[ OVERRIDE...]")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--work-dir", default="outputs/compare_training")
    p.add_argument("--out", help="append the markdown table and the raw results (json) here")
    args = p.parse_args()

    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    if args.dataset:
        splits, num_classes = datasets.prepare(args.dataset, work)
    elif args.train_ann and args.val_ann and args.num_classes:
        splits = {"train": {"image_dir": args.train_dir, "annotation_file": args.train_ann},
                  "val": {"image_dir": args.val_dir, "annotation_file": args.val_ann}}
        num_classes = args.num_classes
    else:
        p.error("give --dataset, or --train-dir/--train-ann/--val-dir/--val-ann/--num-classes")
    settings = TrainSettings(num_classes=num_classes, arch=args.arch, steps=args.steps,
                             min_sizes=tuple(args.min_sizes), max_size=args.max_size,
                             anchor_sizes=tuple(args.anchor_sizes), detections_per_img=args.detections_per_img)
    variants = {} if args.no_default else {"ours": []}
    for spec in args.variant:
        name, _, overrides = spec.partition("=")
        variants[name] = overrides.split()
    start = time.time()
    results = compare(settings, splits["train"], splits["val"], args.seeds, variants, reference=not args.no_reference)
    table = summary_table(results)
    header = (f"dataset {args.dataset or args.train_ann}, {args.steps} steps, sizes {args.min_sizes} max "
              f"{args.max_size}, seeds {args.seeds}, "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
              f"{torch.get_num_threads()}, {time.time() - start:.0f} s in all")
    print("\n" + header + "\n" + table)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(f"\n{header}\n`{' '.join(sys.argv)}`\n\n{table}\n")
        with open(Path(args.out).with_suffix(".jsonl"), "a", encoding="utf-8") as f:
            for r in results:
                f.write(json.dumps({"settings": asdict(settings), **asdict(r)}) + "\n")


if __name__ == "__main__":
    main()
