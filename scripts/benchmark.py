"""One benchmark entry: this repository side by side with the torchvision / pycocotools baselines,
measured in one run on one machine, printed as one markdown table.

    python scripts/benchmark.py                        # tasks model, data, eval, memory; CPU, 2 threads
    python scripts/benchmark.py --quick                # smoke run (< 2 min)
    python scripts/benchmark.py --task model --device cuda --amp bf16 --archs resnet50 resnet101
    python scripts/benchmark.py --task model --model-peak-rss --sizes 512 --iters 5
    python scripts/benchmark.py --task data --data-image-dir DIR --data-annotations FILE.json
    python scripts/benchmark.py --task memory --predict-photo 6000x4000
    python scripts/benchmark.py --task train --dataset nuts --seeds 0 1 2
    python scripts/benchmark.py --task train --dataset cells --steps 300 \
        --variant "grouping off=data.aspect_ratio_grouping=false"
    python scripts/benchmark.py --task train --dataset nuclei --min-sizes 384 --max-size 640 --detections-per-img 300
    python scripts/benchmark.py --task train --dataset large --min-sizes 640 --max-size 1066 --detections-per-img 300 \
        --no-reference --variant "tiles=augmentation=tiles" --eval-slice 640
    python scripts/benchmark.py --task train --dataset nuts --no-reference --eval-tta flip flip_scales \
        --variant "ema=callbacks=ema callbacks.ema.decay=0.99"
    python scripts/benchmark.py --task train --train-dir D --train-ann A.json --val-dir D2 --val-ann B.json \
        --num-classes 5
    python scripts/benchmark.py --eval-images 1000 --out docs/benchmark_cpu.md
    python scripts/benchmark.py --task inference --iters 5 --score-thresh 0.0 [--compile]

Tasks; the measuring code is in scripts/bench/, and this file only maps options onto it:
  model   model_speed.py    train step (forward + backward, 2 images) and inference per image, ours
                            vs torchvision maskrcnn_resnet50_fpn (--archs resnet101: torchvision
                            MaskRCNN with a ResNet-101 FPN) with the same random weights, iterations
                            interleaved, median after warm-up; --model-peak-rss: each implementation
                            and mode in a fresh process, with its peak RSS.
  data    data_pipeline.py  images/s of one DataLoader worker (decode + polygon->mask + resize 800
                            + flip), ours vs a torchvision references/detection-style pipeline.
  eval    eval_backends.py  bbox + segm COCOeval on the same detections: faster-coco-eval (our
                            default backend) vs pycocotools.
  memory  peak_memory.py    peak RSS of pasting N masks into a large image, each case in a fresh
                            process: ours (chunked) vs torchvision's paste_masks_in_image;
                            --predict-photo: peak RSS of src/predict.py on one large JPEG instead.
  train   training.py       the plain torchvision training loop vs our train(cfg), same settings,
                            AP per pipeline (its own table; runs alone, never by default). Every
                            run trains R18-FPN from scratch (reference_loop.TrainSettings);
                            --variant "name=override override ..." adds a run of ours with extra
                            Hydra overrides (choosing another option of a group drops the matched
                            settings' keys of that group).
  inference inference.py    R50-FPN inference at --size px: torchvision vs ours eager vs the fast
                            path (optimize_for_inference: fold_bn, channels_last, bf16, compile),
                            same weights, detections compared with torchvision's in the same run
                            (its own table; runs alone; options after --task inference go to it).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from bench import data_pipeline, datasets, eval_backends, model_peak_rss, model_speed, peak_memory
from bench.reference_loop import TrainSettings
from bench.report import load_average, machine_description, to_markdown
from maskrcnn.cli_args import non_negative_int, output_file, positive_float, positive_int
from maskrcnn.inference.slice_options import SliceOptions


def _model(a: argparse.Namespace) -> list[tuple]:
    if a.model_peak_rss:
        return model_peak_rss.model_peak_rss_rows(a.sizes, a.iters, a.warmup, a.threads, tuple(a.archs))
    return model_speed.model_rows(
        a.sizes, a.iters, a.warmup, a.device, a.amp, tuple(a.archs), tuple(a.batch), a.model_compile, a.trained_like
    )


def _memory(a: argparse.Namespace) -> list[tuple]:
    if a.predict_photo:
        return peak_memory.predict_rows(*peak_memory.parse_size(a.predict_photo), a.threads)
    sizes = [peak_memory.parse_size(s) for s in a.mem_sizes]
    return peak_memory.memory_rows(a.mem_instances, sizes, a.chunk_size, a.threads, a.mem_max_output_gb)


# Tasks whose rows share the one table, in the order they run: name -> options -> rows.
TABLE_TASKS = {
    "model": _model,
    "data": lambda a: data_pipeline.data_rows(
        a.data_images, a.data_repeats, a.data_min_size, a.data_image_dir, a.data_annotations
    ),
    "eval": lambda a: eval_backends.eval_rows(
        a.eval_images,
        a.eval_gt_per_image,
        a.eval_dets_per_image,
        a.eval_categories,
        a.eval_height,
        a.eval_width,
        a.eval_seed,
    ),
    "memory": _memory,
}
# Tasks with their own table and options, each run alone.
TASKS = (*TABLE_TASKS, "train", "inference")


def _table_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="small sizes / few iterations (smoke run)")
    p.add_argument("--skip", default="", help=f"comma-separated tasks to skip: {','.join(TABLE_TASKS)}")
    m = p.add_argument_group("model")
    m.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="model task device")
    m.add_argument("--amp", nargs="?", const="fp16", choices=("fp16", "bf16"), help="autocast dtype (cuda)")
    m.add_argument(
        "--archs",
        nargs="+",
        choices=model_speed.ARCHS,
        default=["resnet50"],
        help="model task backbones (resnet101 vs torchvision's MaskRCNN with that backbone)",
    )
    m.add_argument("--sizes", type=positive_int, nargs="+", help="model image sides (default 512 800; quick 64)")
    m.add_argument("--iters", type=positive_int, help="timed model iterations (default 3; quick 1)")
    m.add_argument("--warmup", type=non_negative_int, default=1, help="untimed model iterations first")
    m.add_argument(
        "--batch", type=positive_int, nargs="+", default=[2], help="images per model train step / inference call"
    )
    m.add_argument(
        "--model-compile",
        action="store_true",
        help="add torch.compile'd variants of ours (backbone, RPN head, box/mask heads)",
    )
    m.add_argument(
        "--trained-like",
        action="store_true",
        help="weights that behave like trained ones (calibrated predictors; benchmark/trained_like_weights.py)",
    )
    m.add_argument(
        "--model-peak-rss",
        action="store_true",
        help="each implementation and mode in a fresh process: time and peak RSS (cpu)",
    )
    d = p.add_argument_group("data")
    d.add_argument(
        "--data-images", type=positive_int, help="synthetic JPEGs, or images of --data-image-dir (default 64; quick 8)"
    )
    d.add_argument("--data-repeats", type=positive_int, help="passes over the data (median; default 3; quick 1)")
    d.add_argument("--data-min-size", type=positive_int, default=800, help="shortest edge after resizing")
    d.add_argument("--data-image-dir", help="measure on this COCO-format dataset instead of synthetic JPEGs")
    d.add_argument("--data-annotations", help="its annotation json (with --data-image-dir)")
    e = p.add_argument_group("eval")
    e.add_argument(
        "--eval-images", type=positive_int, help="images of the COCOeval benchmark (default 5000; quick 200)"
    )
    e.add_argument("--eval-gt-per-image", type=positive_int, default=7)
    e.add_argument("--eval-dets-per-image", type=positive_int, default=100)
    e.add_argument("--eval-categories", type=positive_int, default=20)
    e.add_argument("--eval-height", type=positive_int, default=480)
    e.add_argument("--eval-width", type=positive_int, default=640)
    e.add_argument("--eval-seed", type=int, default=0)
    mem = p.add_argument_group("memory")
    mem.add_argument(
        "--mem-instances", type=positive_int, nargs="+", help="masks per image (default 100 300; quick 20 60)"
    )
    mem.add_argument("--mem-sizes", nargs="+", help="WIDTHxHEIGHT images (default 1333x800 3000x2000; quick 640x480)")
    mem.add_argument("--chunk-size", type=positive_int, default=64, help="our paste_masks chunk_size")
    mem.add_argument(
        "--mem-max-output-gb",
        type=positive_float,
        default=4.0,
        help="skip memory cases whose float32 output (N*H*W*4 bytes) is larger",
    )
    mem.add_argument("--predict-photo", help="WIDTHxHEIGHT: measure src/predict.py on one JPEG instead of pasting")


def _train_options(p: argparse.ArgumentParser) -> None:
    t = p.add_argument_group("train (--task train)")
    t.add_argument("--dataset", choices=datasets.DATASETS, help="a built-in dataset (or give --train-*/--val-*)")
    for name in ("--train-dir", "--train-ann", "--val-dir", "--val-ann"):
        t.add_argument(name)
    t.add_argument("--num-classes", type=positive_int, help="foreground classes (with --train-*)")
    t.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    t.add_argument("--steps", type=positive_int, default=150)
    t.add_argument("--arch", default="resnet18")
    t.add_argument(
        "--min-sizes",
        type=positive_int,
        nargs="+",
        default=list(TrainSettings.min_sizes),
        help="training shortest-edge choices; the last one is the evaluation size",
    )
    t.add_argument("--max-size", type=positive_int, default=TrainSettings.max_size)
    t.add_argument("--anchor-sizes", type=positive_int, nargs=5, default=[32, 64, 128, 256, 512])
    t.add_argument("--detections-per-img", type=positive_int, default=100)
    t.add_argument("--no-reference", action="store_true", help="skip the torchvision loop")
    t.add_argument("--no-default", action="store_true", help="skip the run of ours without extra overrides")
    t.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDE[ OVERRIDE...]")
    t.add_argument("--work-dir", default="outputs/compare_training")
    t.add_argument(
        "--eval-slice",
        type=positive_int,
        metavar="TILE",
        help="also evaluate every network of ours by sliced inference with TILE px tiles (inference.slice)",
    )
    t.add_argument(
        "--eval-tta",
        nargs="+",
        default=[],
        choices=["flip", "flip_scales"],
        help="also evaluate every network of ours with these test-time augmentation options (conf/tta/)",
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--task",
        nargs="+",
        choices=TASKS,
        default=list(TABLE_TASKS),
        help=f"what to measure (default: {' '.join(TABLE_TASKS)}); train runs alone",
    )
    p.add_argument(
        "--out",
        type=output_file,
        help="also write the machine description and table to this markdown file "
        "(train: append the table, and the raw results to <out>.jsonl)",
    )
    p.add_argument("--threads", type=positive_int, help="torch.set_num_threads (default 2; train: torch's choice)")
    _table_options(p)
    _train_options(p)
    args = p.parse_args(argv)
    if "train" in args.task:
        if args.task != ["train"]:
            p.error("--task train runs alone (its table has other columns)")
        if not (args.dataset or (args.train_ann and args.val_ann and args.num_classes)):
            p.error("--task train: give --dataset, or --train-dir/--train-ann/--val-dir/--val-ann/--num-classes")
        return args
    unknown = set(filter(None, args.skip.split(","))) - set(TABLE_TASKS)
    if unknown:
        p.error(f"--skip: unknown task(s) {sorted(unknown)}; valid: {','.join(TABLE_TASKS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    if args.amp and args.device != "cuda":
        p.error("--amp needs --device cuda (CPU autocast speeds are not representative)")
    if args.model_peak_rss and (args.device != "cpu" or args.batch != [2] or args.model_compile or args.trained_like):
        p.error(
            "--model-peak-rss measures the default model rows on the CPU "
            "(drop --device cuda, --batch, --model-compile, --trained-like)"
        )
    if (args.data_image_dir is None) != (args.data_annotations is None):
        p.error("--data-image-dir and --data-annotations go together")
    q = args.quick
    defaults = {
        "threads": 2,
        "sizes": [64] if q else [512, 800],
        "iters": 1 if q else 3,
        "data_images": 8 if q else 64,
        "data_repeats": 1 if q else 3,
        "eval_images": 200 if q else 5000,
        "mem_instances": [20, 60] if q else [100, 300],
        "mem_sizes": ["640x480"] if q else ["1333x800", "3000x2000"],
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def _command(argv) -> str:
    return ("python scripts/benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()


def run_train(args: argparse.Namespace, argv=None) -> str:
    from bench.training_report import run_training_comparison

    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dataset:
        splits, num_classes = datasets.prepare(args.dataset, Path(args.work_dir))
    else:
        splits = {
            "train": {"image_dir": args.train_dir, "annotation_file": args.train_ann},
            "val": {"image_dir": args.val_dir, "annotation_file": args.val_ann},
        }
        num_classes = args.num_classes
    settings = TrainSettings(
        num_classes=num_classes,
        arch=args.arch,
        steps=args.steps,
        min_sizes=tuple(args.min_sizes),
        max_size=args.max_size,
        anchor_sizes=tuple(args.anchor_sizes),
        detections_per_img=args.detections_per_img,
    )
    variants = {} if args.no_default else {"ours": []}
    for spec in args.variant:
        name, _, overrides = spec.partition("=")
        variants[name] = overrides.split()
    return run_training_comparison(
        settings,
        splits,
        args.seeds,
        variants,
        not args.no_reference,
        args.dataset or args.train_ann,
        _command(argv),
        args.out,
        eval_slice=SliceOptions(args.eval_slice) if args.eval_slice else None,
        eval_tta=args.eval_tta,
    )


def main(argv=None) -> str:
    argv = sys.argv[1:] if argv is None else list(argv)
    for i in range(len(argv) - 1):
        if argv[i] == "--task" and argv[i + 1] == "inference":  # its own options: hand them over
            from bench import inference

            return inference.format_table(inference.main(argv[:i] + argv[i + 2 :]))
    args = parse_args(argv)
    if args.task == ["train"]:
        return run_train(args, argv)
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    machine = machine_description(args.device)
    print("\n".join(machine), flush=True)
    started = time.perf_counter()
    rows: list[tuple] = []
    for task in TABLE_TASKS:  # the table's order, whatever the order on the command line
        if task in args.task and task not in skip:
            rows += TABLE_TASKS[task](args)
    table = to_markdown(rows)
    footer = f"total benchmark time {time.perf_counter() - started:.0f} s"
    if load_average() is not None:
        footer += f"; load average at end: {load_average()}"
    print("\n" + table + "\n\n" + footer)
    if args.out:
        text = "\n".join(["```", _command(argv), *machine, "```", "", table, "", footer, ""])
        Path(args.out).write_text(text)
    return table


if __name__ == "__main__":
    main()
