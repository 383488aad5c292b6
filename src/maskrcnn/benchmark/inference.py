"""Inference speed: torchvision's ``maskrcnn_resnet50_fpn`` vs our MaskRCNN, eager and optimised.

All models hold the SAME random weights (torchvision's seeded init, no download) with trained-like
BatchNorm statistics and affine parameters, so folding BatchNorm really rewrites the convolutions.
They run in one process, one image of ``size`` x ``size`` per call (batch 1), all cores; every
repetition runs every model once, in an order that rotates between repetitions, so background
load slows all of them alike. Detections of each of our variants are compared with torchvision's
in the same run (labels, boxes, scores, masks).

    python -m maskrcnn.benchmark.inference                      # 800 px, 3 timed repetitions
    python -m maskrcnn.benchmark.inference --iters 1 --size 320 # smoke run
    python -m maskrcnn.benchmark.inference --compile            # adds torch.compile rows (slow to build)

``run(...)`` returns the table rows (dicts); ``main(argv)`` prints them as a Markdown table.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time

import torch
from torch import nn

NUM_CLASSES_INCL_BG = 91
TORCHVISION = "torchvision maskrcnn_resnet50_fpn"
EAGER = "ours, eager"
# name -> optimize_for_inference options; each option alone, then combined
VARIANTS: dict[str, dict] = {
    "ours, fast: fold_bn": {"fold_bn": True, "channels_last": False},
    "ours, fast: channels_last": {"fold_bn": False, "channels_last": True},
    "ours, fast: fold_bn + channels_last (default)": {},
    "ours, fast: default + bf16": {"bf16": True},
}
COMPILE_VARIANTS: dict[str, dict] = {
    "ours, fast: compile": {"fold_bn": False, "channels_last": False, "compile": True},
    "ours, fast: default + compile": {"compile": True},
}
# detections must agree with torchvision's this closely (issue 15); bf16 is reported, not required to
TOLERANCE = {"boxes": 1e-3, "scores": 1e-4, "masks": 1e-3}


def trained_like_state(state: dict, seed: int = 0) -> dict:
    """``state`` with every BatchNorm's running_mean/var and weight/bias replaced by random
    non-trivial values (means ~N(0, 0.1), variances in [0.5, 1.5], gammas in [0.5, 1.5])."""
    g = torch.Generator().manual_seed(seed)
    out = dict(state)
    for key in state:
        if key.endswith(".running_var"):
            prefix, c = key[: -len("running_var")], state[key].shape[0]
            out[prefix + "running_mean"] = torch.randn(c, generator=g) * 0.1
            out[prefix + "running_var"] = torch.rand(c, generator=g) + 0.5
            out[prefix + "weight"] = torch.rand(c, generator=g) + 0.5
            out[prefix + "bias"] = torch.randn(c, generator=g) * 0.1
    return out


def build_models(size: int, score_thresh: float, variants: dict[str, dict], seed: int = 0) -> dict[str, nn.Module]:
    """torchvision's model, ours eager and ours optimised per variant, all with the same weights."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    from maskrcnn.modeling.build import torchvision_compatible_mask_rcnn
    from maskrcnn.modeling.fast_inference import optimize_for_inference

    torch.manual_seed(seed)
    reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=size, max_size=size,
                                      box_score_thresh=score_thresh)
    state = trained_like_state(reference.state_dict(), seed)
    reference.load_state_dict(state)
    ours = torchvision_compatible_mask_rcnn(NUM_CLASSES_INCL_BG, transform={"min_size": size, "max_size": size},
                                            roi_heads={"score_thresh": score_thresh})
    ours.load_state_dict(state)
    models = {TORCHVISION: reference.eval(), EAGER: ours.eval()}
    for name, options in variants.items():
        models[name] = optimize_for_inference(ours, **options)
    return models


def _detections(model: nn.Module, image: torch.Tensor) -> dict:
    out = model([image])
    return out[0] if isinstance(out, list) else out["detections"][0]


def compare_detections(ours: dict, reference: dict) -> dict:
    """Max absolute differences (boxes px, scores, mask probabilities) and label equality.
    Different detection counts make the element-wise differences undefined (NaN)."""
    same_count = ours["boxes"].shape[0] == reference["boxes"].shape[0]
    if not same_count:
        return {"labels_equal": False, "boxes": math.nan, "scores": math.nan, "masks": math.nan}

    def diff(key: str) -> float:
        a, b = ours[key].double(), reference[key].double()
        return float((a - b).abs().max()) if a.numel() else 0.0

    return {"labels_equal": torch.equal(ours["labels"], reference["labels"]),
            "boxes": diff("boxes"), "scores": diff("scores"), "masks": diff("masks")}


@torch.inference_mode()
def run(size: int = 800, iters: int = 3, warmup: int = 0, threads: int | None = None, score_thresh: float = 0.05,
        compile: bool = False, seed: int = 0, log=print) -> list[dict]:  # noqa: A002
    """Time every model on one ``size`` x ``size`` image, interleaved; check detections against torchvision.

    The checking pass (every model once) is also the warm-up; ``warmup`` adds untimed repetitions.

    Returns:
        one dict per model: ``model``, ``ms_per_image`` (median of ``iters``), ``speedup`` (torchvision's
        time / this model's time), ``detections``, ``labels_equal``, max differences to torchvision
        ``boxes`` (px), ``scores``, ``masks`` (probabilities), and ``within_tolerance`` (``TOLERANCE``).
    """
    torch.set_num_threads(threads or os.cpu_count() or 1)
    variants = {**VARIANTS, **(COMPILE_VARIANTS if compile else {})}
    models = build_models(size, score_thresh, variants, seed)
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))
    names = list(models)
    reference = _detections(models[TORCHVISION], image)
    outputs = {name: _detections(models[name], image) for name in names}  # also builds compiled graphs
    checks = {name: compare_detections(out, reference) for name, out in outputs.items()}
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(warmup + iters):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:  # rotate who goes first
            start = time.perf_counter()
            _detections(models[name], image)
            if rep >= warmup:
                times[name].append(time.perf_counter() - start)
        log(f"repetition {rep + 1}/{warmup + iters} done" + (" (warm-up)" if rep < warmup else ""))
    base = statistics.median(times[TORCHVISION])
    rows = []
    for name in names:
        median = statistics.median(times[name])
        check = checks[name]
        within = check["labels_equal"] and all(check[k] <= tol for k, tol in TOLERANCE.items())
        rows.append({"model": name, "ms_per_image": 1000 * median, "speedup": base / median,
                     "detections": int(outputs[name]["boxes"].shape[0]), **check, "within_tolerance": within})
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of ``run``'s rows."""
    lines = ["| model | ms/image | torchvision time / this | detections | same labels | max box diff [px] | max score diff | "
             "max mask diff | within 1e-3 px / 1e-4 / 1e-3 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['ms_per_image']:.0f} | {r['speedup']:.2f} | {r['detections']} | {r['labels_equal']} | "
                     f"{r['boxes']:.2g} | {r['scores']:.2g} | {r['masks']:.2g} | {r['within_tolerance']} |")
    return "\n".join(lines)


def machine_line(threads: int) -> str:
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, torch threads {threads}, "
            f"torch {torch.__version__}; load average (1/5/15 min) {load}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=800, help="side of the square test image")
    parser.add_argument("--iters", type=int, default=3, help="timed repetitions (median reported)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed repetitions after the checking pass")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--score-thresh", type=float, default=0.05, help="box score threshold of all models")
    parser.add_argument("--compile", action="store_true", help="add torch.compile variants (minutes to build)")
    args = parser.parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    print(f"machine at start: {machine_line(threads)}")
    rows = run(args.size, args.iters, args.warmup, threads, args.score_thresh, args.compile)
    print(f"\n1 image {args.size}x{args.size}, batch 1, median of {args.iters} interleaved repetitions "
          f"after a checking pass and {args.warmup} warm-up; "
          "differences are to torchvision's detections\n")
    print(format_table(rows))
    print(f"\nmachine at end: {machine_line(threads)}")
    return rows


if __name__ == "__main__":
    main()
