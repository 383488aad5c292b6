"""One command, one markdown table: model speed, data pipeline, COCO evaluation and mask-pasting
memory of this repository side by side with the torchvision / pycocotools baselines, measured in
one run on one machine.

    python scripts/benchmark.py                        # full run, CPU, 2 threads
    python scripts/benchmark.py --quick                # smoke run (< 2 min)
    python scripts/benchmark.py --device cuda --amp bf16 --archs resnet50 resnet101 --skip data,eval,memory
    python scripts/benchmark.py --eval-images 1000 --out docs/benchmark_cpu.md

Sections (the sibling scripts hold the measuring code and run standalone too):
  model   benchmark_model.py  train step (forward + backward, 2 images) and inference per image,
                              ours vs torchvision maskrcnn_resnet50_fpn (--archs resnet101: torchvision
                              MaskRCNN with a ResNet-101 FPN) with the same random weights,
                              iterations interleaved; median after warm-up.
  data    benchmark_data.py   images/s of one DataLoader worker (decode + polygon->mask + resize 800
                              + flip), ours vs a torchvision references/detection-style pipeline.
  eval    benchmark_eval.py   bbox + segm COCOeval on the same detections: faster-coco-eval (our
                              default backend) vs pycocotools.
  memory  benchmark_memory.py peak RSS of pasting N masks into a large image, each case in a fresh
                              process: ours (chunked) vs torchvision's paste_masks_in_image.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmark_* modules

import torch  # noqa: E402

SECTIONS = ("model", "data", "eval", "memory")
HEADER = ("section", "metric", "ours", "baseline", "ours / baseline", "baseline; notes")
DATA_TARGET = 50.0  # images/s per worker the data pipeline should reach


def machine_description(device: str) -> list[str]:
    """Lines describing CPU, memory, load, library versions (and GPU when CUDA is used)."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [f"CPU: {cpu}, {os.cpu_count()} logical cores ({usable} usable), torch threads {torch.get_num_threads()}"]
    try:
        mem_kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
        lines.append(f"RAM: {mem_kb / 2**20:.1f} GiB")
    except (OSError, StopIteration):
        pass
    if hasattr(os, "getloadavg"):
        lines.append("load average at start (1/5/15 min): " + " / ".join(f"{v:.2f}" for v in os.getloadavg()))
    import torchvision

    lines.append(f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}")
    if device == "cuda":
        lines.append(f"GPU: {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}")
    return lines


def model_rows(sizes, iters: int, warmup: int, device: str, amp: str | None,
               archs: tuple[str, ...] = ("resnet50",)) -> list[tuple]:
    from benchmark_model import reference_state, time_model_pair

    where = f"{device}{', autocast ' + amp if amp else ''}"
    rows = []
    for arch in archs:
        state = reference_state(arch=arch)
        name = "R" + arch.removeprefix("resnet") + "-FPN"
        baseline = "maskrcnn_resnet50_fpn" if arch == "resnet50" else f"MaskRCNN({arch} FPN)"
        for size in sizes:
            for mode, label, per in (("train", "train step [s/iter]", 1), ("eval", "inference [s/image]", 2)):
                t = time_model_pair(size, mode, iters, warmup, device, amp, state, arch=arch)
                print(f"model {name} {size}px {mode}: ours {t['ours']:.3f} s, torchvision {t['torchvision']:.3f} s",
                      flush=True)
                rate = f"= {2 / t['ours']:.1f} vs {2 / t['torchvision']:.1f} images/s; " if mode == "train" else ""
                rows.append(("model", f"{name} {label}, 2 img {size}x{size}", t["ours"] / per,
                             t["torchvision"] / per,
                             f"torchvision {baseline}, same weights; {where}; median of {iters}; {rate}lower is better"))
    return rows


def data_rows(num_images: int, repeats: int) -> list[tuple]:
    from benchmark_data import run_data_benchmark

    rates = run_data_benchmark(num_images, repeats)
    print(f"data: ours {rates['ours']:.1f}, torchvision-style {rates['torchvision']:.1f} images/s", flush=True)
    verdict = "meets" if rates["ours"] >= DATA_TARGET else "MISSES"
    return [("data", "images/s per worker (decode+masks+resize 800+flip)", rates["ours"], rates["torchvision"],
             f"torchvision CocoDetection + pycocotools masks + v2 Resize/Flip; {num_images} JPEG 640x480, "
             f"7 polygons each; 1 thread; higher is better; {verdict} target >= {DATA_TARGET:.0f}")]


def eval_rows(num_images: int) -> list[tuple]:
    from benchmark_eval import run_eval_benchmark

    r = run_eval_benchmark(num_images)
    s = r["seconds"]
    return [("eval", f"COCOeval bbox+segm, {r['num_images']} images [s]", s["faster_coco_eval"], s["pycocotools"],
             f"pycocotools (ours = faster-coco-eval backend); {r['num_detections']} detections, {r['num_gt']} gt; "
             f"max metric diff {r['max_metric_diff']:.1e}; lower is better")]


def memory_rows(instances, sizes, chunk_size: int, threads: int, max_output_gb: float) -> list[tuple]:
    from benchmark_memory import run_memory_benchmark

    # torchvision holds the output twice (per-mask list + stacked copy): keep the shared machine alive
    too_big = [(w, h, n) for w, h in sizes for n in instances if n * w * h * 4 / 2**30 > max_output_gb]
    for w, h, n in too_big:
        print(f"memory: skipping {n} masks into {w}x{h} (output > --mem-max-output-gb {max_output_gb})")
    results = run_memory_benchmark(instances, sizes, chunk_size, threads, skip_cases=too_big)
    rows = []
    for i in range(0, len(results), 2):
        ours, tv = results[i], results[i + 1]
        case = f"paste {ours['num']} masks into {ours['width']}x{ours['height']}"
        rows.append(("memory", f"{case}: peak RSS above pre-paste RSS [MB]", ours["delta_mb"], tv["delta_mb"],
                     f"torchvision paste_masks_in_image; float32 output alone {ours['output_mb']:.0f} MB; "
                     f"absolute peak RSS {ours['peak_mb']:.0f} vs {tv['peak_mb']:.0f} MB; ours chunk_size="
                     f"{chunk_size}; fresh process each; lower is better"))
        rows.append(("memory", f"{case}: time [s]", ours["seconds"], tv["seconds"], "same cases; lower is better"))
    return rows


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def to_markdown(rows: list[tuple]) -> str:
    """Rows of (section, metric, ours, baseline, notes) -> markdown table with the ratio column."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for section, metric, ours, base, notes in rows:
        ratio = f"{ours / base:.2f}" if base > 0 else "n/a"
        lines.append(f"| {section} | {metric} | {_fmt(ours)} | {_fmt(base)} | {ratio} | {notes} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes / few iterations (smoke run)")
    p.add_argument("--skip", default="", help=f"comma-separated sections to skip: {','.join(SECTIONS)}")
    p.add_argument("--out", help="also write the machine description and table to this markdown file")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (model, memory)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="model section device")
    p.add_argument("--amp", nargs="?", const="fp16", choices=("fp16", "bf16"), help="autocast dtype (cuda)")
    p.add_argument("--archs", nargs="+", choices=("resnet50", "resnet101"), default=["resnet50"],
                   help="model section backbones (resnet101 vs torchvision's MaskRCNN with that backbone)")
    p.add_argument("--sizes", type=int, nargs="+", help="model image sides (default 512 800; quick 64)")
    p.add_argument("--iters", type=int, help="timed model iterations (default 3; quick 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed model iterations first")
    p.add_argument("--data-images", type=int, help="synthetic JPEGs (default 64; quick 8)")
    p.add_argument("--data-repeats", type=int, help="passes over the data (median; default 3; quick 1)")
    p.add_argument("--eval-images", type=int, help="images of the COCOeval benchmark (default 5000; quick 200)")
    p.add_argument("--mem-instances", type=int, nargs="+", help="masks per image (default 100 300; quick 20 60)")
    p.add_argument("--mem-sizes", nargs="+", help="WIDTHxHEIGHT images (default 1333x800 3000x2000; quick 640x480)")
    p.add_argument("--chunk-size", type=int, default=64, help="our paste_masks chunk_size")
    p.add_argument("--mem-max-output-gb", type=float, default=4.0,
                   help="skip memory cases whose float32 output (N*H*W*4 bytes) is larger")
    args = p.parse_args(argv)
    unknown = set(filter(None, args.skip.split(","))) - set(SECTIONS)
    if unknown:
        p.error(f"--skip: unknown section(s) {sorted(unknown)}; valid: {','.join(SECTIONS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    if args.amp and args.device != "cuda":
        p.error("--amp needs --device cuda (CPU autocast speeds are not representative)")
    q = args.quick
    defaults = {"sizes": [64] if q else [512, 800], "iters": 1 if q else 3, "data_images": 8 if q else 64,
                "data_repeats": 1 if q else 3, "eval_images": 200 if q else 5000,
                "mem_instances": [20, 60] if q else [100, 300], "mem_sizes": ["640x480"] if q else ["1333x800", "3000x2000"]}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    machine = machine_description(args.device)
    print("\n".join(machine), flush=True)
    started = time.perf_counter()
    rows: list[tuple] = []
    if "model" not in skip:
        rows += model_rows(args.sizes, args.iters, args.warmup, args.device, args.amp, tuple(args.archs))
    if "data" not in skip:
        rows += data_rows(args.data_images, args.data_repeats)
    if "eval" not in skip:
        rows += eval_rows(args.eval_images)
    if "memory" not in skip:
        from benchmark_memory import parse_size

        sizes = [parse_size(s) for s in args.mem_sizes]
        rows += memory_rows(args.mem_instances, sizes, args.chunk_size, args.threads, args.mem_max_output_gb)
    table = to_markdown(rows)
    footer = f"total benchmark time {time.perf_counter() - started:.0f} s"
    if hasattr(os, "getloadavg"):
        footer += "; load average at end: " + " / ".join(f"{v:.2f}" for v in os.getloadavg())
    print("\n" + table + "\n\n" + footer)
    if args.out:
        command = "python scripts/benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv)
        text = "\n".join(["```", command.strip(), *machine, "```", "", table, "", footer, ""])
        Path(args.out).write_text(text)
    return table


if __name__ == "__main__":
    main()
