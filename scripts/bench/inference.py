"""Inference speed: torchvision's ``maskrcnn_resnet50_fpn`` vs our MaskRCNN, eager and optimised.

All models hold the SAME random weights (torchvision's seeded init, no download) made to behave
like trained ones (``trained_like_weights``): BatchNorm with non-trivial statistics and affine
parameters, so folding really rewrites the convolutions, and predictors calibrated to a trained
model's output spread, so the RPN proposes 1000 boxes and detections pass the score threshold.
They run in one process, one image of ``size`` x ``size`` per call (batch 1), all cores; every
repetition runs every model once, in an order that rotates between repetitions, so background
load slows all of them alike. Detections of each of our variants are compared with torchvision's
in the same run (labels, boxes, scores, masks).

The float32 differences are rounding in another order. ``float64=True`` (the default) also
rebuilds every exact variant and torchvision in float64 from the same weights and compares
those detections: a rewrite that is exact algebra agrees there to ~1e-12 px.

    python -m bench.inference                      # 800 px, 3 timed repetitions
    python -m bench.inference --iters 1 --size 320 # smoke run
    python -m bench.inference --compile            # adds torch.compile rows (slow to build)
    python -m bench.inference --no-float64         # skips the float64 check (about 1 min at 800 px)

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

from bench.trained_like_weights import calibrate_predictors, trained_like_state

NUM_CLASSES_INCL_BG = 91
TORCHVISION = "torchvision maskrcnn_resnet50_fpn"
EAGER = "ours, eager"
# name -> optimize_for_inference options; each option alone, then combined
_ALL_OFF = {"fold_bn": False, "channels_last": False, "roi_align_threads": False, "onednn_linear": False}
VARIANTS: dict[str, dict] = {
    "ours, fast: fold_bn": {**_ALL_OFF, "fold_bn": True},
    "ours, fast: channels_last": {**_ALL_OFF, "channels_last": True},
    "ours, fast: roi_align_threads": {**_ALL_OFF, "roi_align_threads": True},
    "ours, fast: onednn_linear": {**_ALL_OFF, "onednn_linear": True},
    "ours, fast: all four (default)": {},
    "ours, fast: default + bf16": {"bf16": True},
}
COMPILE_VARIANTS: dict[str, dict] = {
    "ours, fast: compile": {**_ALL_OFF, "compile": True},
    "ours, fast: default + compile": {"compile": True},
}
# detections must agree with torchvision's this closely (issue 15); bf16 is reported, not required to
TOLERANCE = {"boxes": 1e-3, "scores": 1e-4, "masks": 1e-3}


def build_models(
    size: int, score_thresh: float, variants: dict[str, dict], seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, nn.Module]:
    """torchvision's model, ours eager and ours optimised per variant, all with the same weights,
    in ``dtype`` (converted before optimising, so BatchNorm is folded in that precision)."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    from bench.torchvision_compat import torchvision_compatible_mask_rcnn
    from maskrcnn.inference.optimize.fast_inference import optimize_for_inference

    torch.manual_seed(seed)
    reference = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=size, max_size=size, box_score_thresh=score_thresh
    )
    reference.load_state_dict(trained_like_state(reference.state_dict(), seed))
    calibrate_predictors(reference, _image(size, seed))
    state = reference.state_dict()
    ours = torchvision_compatible_mask_rcnn(
        NUM_CLASSES_INCL_BG, transform={"min_size": size, "max_size": size}, roi_heads={"score_thresh": score_thresh}
    )
    ours.load_state_dict(state)
    models = {TORCHVISION: reference.to(dtype).eval(), EAGER: ours.to(dtype).eval()}
    for name, options in variants.items():
        models[name] = optimize_for_inference(ours, **options)
    return models


def _image(size: int, seed: int) -> torch.Tensor:
    """The benchmark image: Tensor[3, size, size] float32 uniform noise in [0, 1]."""
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


def _detections(model: nn.Module, image: torch.Tensor) -> dict:
    out = model([image])
    return out[0] if isinstance(out, list) else out["detections"][0]


def _nearest_same_label(
    boxes: torch.Tensor, labels: torch.Tensor, other_boxes: torch.Tensor, other_labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each box (Tensor[N, 4] xyxy px), the largest coordinate difference to the closest box of
    the same label among ``other_boxes`` (Tensor[M, 4]) and that box's index: Tensor[N] float64 (inf
    where no box has the label), Tensor[N] long."""
    cost = (boxes.double()[:, None, :] - other_boxes.double()[None, :, :]).abs().amax(dim=-1)  # [N, M]
    cost[labels[:, None] != other_labels[None, :]] = math.inf
    return cost.min(dim=1)


def compare_detections(ours: dict, reference: dict) -> dict:
    """Max absolute differences (boxes px, scores, mask probabilities) and label equality.

    Detections are paired by box, not by rank: each detection of ours with the closest
    same-label detection of the reference and vice versa (the box difference is the larger of
    the two directions). Detections with equal scores, common with random weights (scores
    saturated at 1.0), have no defined order, and a rank-by-rank comparison would report
    the distance between two different objects. Different detection counts leave the
    differences undefined (NaN)."""
    if ours["boxes"].shape[0] != reference["boxes"].shape[0]:
        return {"labels_equal": False, "boxes": math.nan, "scores": math.nan, "masks": math.nan}
    if ours["boxes"].shape[0] == 0:
        return {"labels_equal": True, "boxes": 0.0, "scores": 0.0, "masks": 0.0}
    forward, pair = _nearest_same_label(ours["boxes"], ours["labels"], reference["boxes"], reference["labels"])
    backward, _ = _nearest_same_label(reference["boxes"], reference["labels"], ours["boxes"], ours["labels"])
    labels_equal = torch.equal(ours["labels"].sort().values, reference["labels"].sort().values)
    labels_equal = labels_equal and bool(torch.isfinite(forward).all() and torch.isfinite(backward).all())

    def diff(key: str) -> float:
        return float((ours[key].double() - reference[key][pair].double()).abs().max())

    return {
        "labels_equal": labels_equal,
        "boxes": float(torch.maximum(forward.max(), backward.max())),
        "scores": diff("scores"),
        "masks": diff("masks"),
    }


@torch.inference_mode()
def float64_differences(size: int, score_thresh: float, variants: dict[str, dict], seed: int = 0) -> dict[str, dict]:
    """``compare_detections`` of ours (eager and each float32 variant) with torchvision, all in float64.

    bf16 and compiled variants are skipped (bf16 is not float64; inductor would build new graphs)."""
    exact_variants = {name: opts for name, opts in variants.items() if not opts.get("bf16") and not opts.get("compile")}
    models = build_models(size, score_thresh, exact_variants, seed, dtype=torch.float64)
    image = _image(size, seed).double()
    reference = _detections(models.pop(TORCHVISION), image)
    return {name: compare_detections(_detections(model, image), reference) for name, model in models.items()}


@torch.inference_mode()
def run(
    size: int = 800,
    iters: int = 3,
    warmup: int = 0,
    threads: int | None = None,
    score_thresh: float = 0.05,
    compile: bool = False,
    seed: int = 0,
    float64: bool = True,
    log=print,
) -> list[dict]:  # noqa: A002
    """Time every model on one ``size`` x ``size`` image, interleaved; check detections against torchvision.

    The checking pass (every model once) is also the warm-up; ``warmup`` adds untimed repetitions.

    Returns:
        one dict per model: ``model``, ``ms_per_image`` (median of ``iters``), ``speedup`` (torchvision's
        time / this model's time), ``detections``, ``labels_equal``, max differences to torchvision
        ``boxes`` (px), ``scores``, ``masks`` (probabilities), ``within_tolerance`` (``TOLERANCE``), and
        with ``float64`` ``boxes_float64`` / ``scores_float64`` / ``labels_equal_float64`` (NaN / None
        for torchvision itself and for bf16 or compiled variants).
    """
    torch.set_num_threads(threads or os.cpu_count() or 1)
    variants = {**VARIANTS, **(COMPILE_VARIANTS if compile else {})}
    models = build_models(size, score_thresh, variants, seed)
    image = _image(size, seed)
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
    exact = float64_differences(size, score_thresh, variants, seed) if float64 else {}
    if float64:
        log("float64 check done")
    base = statistics.median(times[TORCHVISION])
    rows = []
    for name in names:
        median = statistics.median(times[name])
        check = checks[name]
        within = check["labels_equal"] and all(check[k] <= tol for k, tol in TOLERANCE.items())
        check64 = exact.get(name, {})
        rows.append(
            {
                "model": name,
                "ms_per_image": 1000 * median,
                "speedup": base / median,
                "detections": int(outputs[name]["boxes"].shape[0]),
                **check,
                "within_tolerance": within,
                "labels_equal_float64": check64.get("labels_equal"),
                "boxes_float64": check64.get("boxes", math.nan),
                "scores_float64": check64.get("scores", math.nan),
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of ``run``'s rows."""
    lines = [
        "| model | ms/image | torchvision time / this | detections | same labels | max box diff [px] | "
        "max score diff | "
        "max mask diff | within 1e-3 px / 1e-4 / 1e-3 | float64: same labels | float64: max box diff [px] | "
        "float64: max score diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        same64 = "–" if r.get("labels_equal_float64") is None else r["labels_equal_float64"]
        box64 = "–" if math.isnan(r.get("boxes_float64", math.nan)) else f"{r['boxes_float64']:.2g}"
        score64 = "–" if math.isnan(r.get("scores_float64", math.nan)) else f"{r['scores_float64']:.2g}"
        lines.append(
            f"| {r['model']} | {r['ms_per_image']:.0f} | {r['speedup']:.2f} | {r['detections']} | "
            f"{r['labels_equal']} | "
            f"{r['boxes']:.2g} | {r['scores']:.2g} | {r['masks']:.2g} | {r['within_tolerance']} | "
            f"{same64} | {box64} | {score64} |"
        )
    return "\n".join(lines)


def machine_line(threads: int) -> str:
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, torch threads {threads}, "
        f"torch {torch.__version__}; load average (1/5/15 min) {load}"
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=800, help="side of the square test image")
    parser.add_argument("--iters", type=int, default=3, help="timed repetitions (median reported)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed repetitions after the checking pass")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--score-thresh", type=float, default=0.05, help="box score threshold of all models")
    parser.add_argument("--compile", action="store_true", help="add torch.compile variants (minutes to build)")
    parser.add_argument(
        "--no-float64",
        dest="float64",
        action="store_false",
        help="skip the float64 rebuild of every exact variant and torchvision (untimed check)",
    )
    args = parser.parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    print(f"machine at start: {machine_line(threads)}")
    rows = run(args.size, args.iters, args.warmup, threads, args.score_thresh, args.compile, float64=args.float64)
    print(
        f"\n1 image {args.size}x{args.size}, batch 1, median of {args.iters} interleaved repetitions "
        f"after a checking pass and {args.warmup} warm-up; "
        "differences are to torchvision's detections"
        + ("; float64 columns: every model rebuilt in float64 from the same weights (untimed)" if args.float64 else "")
        + "\n"
    )
    print(format_table(rows))
    print(f"\nmachine at end: {machine_line(threads)}")
    return rows


if __name__ == "__main__":
    main()
