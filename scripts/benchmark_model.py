"""Speed / memory of our Mask R-CNN vs torchvision's maskrcnn_resnet50_fpn, same random weights.

Each (implementation, mode) runs in a fresh subprocess so that its peak RSS is its own.
Example:
    python scripts/benchmark_model.py --size 512 --iters 5 --threads 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

NUM_CLASSES_INCL_BG = 91


def _batch(size: int, seed: int = 0) -> tuple[list[torch.Tensor], list[dict]]:
    """Two size x size images with 3 and 1 box/mask instances."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, size, size, generator=g) for _ in range(2)]
    targets = []
    for num in (3, 1):
        xy = torch.rand(num, 2, generator=g) * size * 0.5
        boxes = torch.cat([xy, xy + torch.rand(num, 2, generator=g) * size * 0.4 + 16], dim=1)
        masks = torch.zeros(num, size, size, dtype=torch.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[i, y0:y1, x0:x1] = 1
        labels = torch.randint(1, NUM_CLASSES_INCL_BG, (num,), generator=g)
        targets.append({"boxes": boxes, "labels": labels, "masks": masks})
    return images, targets


def _build(impl: str, size: int, weights: str) -> tuple[torch.nn.Module, object]:
    """Model and a ``loss(model, images, targets) -> scalar`` function."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if impl == "torchvision":
        from torchvision.models.detection import maskrcnn_resnet50_fpn

        model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=size, max_size=size)
        model.load_state_dict(state)
        return model, lambda m, im, t: sum(m(im, t).values())

    from maskrcnn.modeling.build import torchvision_compatible_mask_rcnn

    model = torchvision_compatible_mask_rcnn(NUM_CLASSES_INCL_BG, transform={"min_size": size, "max_size": size})
    model.load_state_dict(state)
    try:
        from maskrcnn.losses import build_criterion

        criterion = build_criterion("ce")
    except ImportError:  # the losses package is optional for this script
        criterion = _inline_criterion
    return model, lambda m, im, t: sum(criterion(m(im, t)["loss_inputs"]).values())


def _inline_criterion(li: dict) -> dict:
    """torchvision's five losses computed directly from LossInputs (fallback)."""
    import torch.nn.functional as F

    rpn, roi, mask = li["rpn"], li["roi"], li["mask"]
    smooth = lambda d, t, n: F.smooth_l1_loss(d, t, beta=1 / 9, reduction="sum") / max(n, 1)  # noqa: E731
    return {
        "loss_objectness": F.binary_cross_entropy_with_logits(rpn["objectness"], rpn["labels"]),
        "loss_rpn_box": smooth(rpn["box_deltas"], rpn["box_targets"], rpn["objectness"].numel()),
        "loss_classifier": F.cross_entropy(roi["class_logits"], roi["labels"]),
        "loss_box": smooth(roi["box_deltas"], roi["box_targets"], roi["labels"].numel()),
        "loss_mask": F.binary_cross_entropy_with_logits(mask["logits"], mask["targets"])
        if mask["logits"].numel()
        else mask["logits"].sum() * 0,
    }


def _worker(impl: str, mode: str, args: argparse.Namespace, weights: str, queue: mp.Queue) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, loss_fn = _build(impl, args.size, weights)
    images, targets = _batch(args.size)
    times = []
    for step in range(args.warmup + args.iters):
        start = time.perf_counter()
        if mode == "train":
            model.train()
            model.zero_grad(set_to_none=True)
            torch.manual_seed(step)
            loss_fn(model, images, targets).backward()
        else:
            model.eval()
            with torch.no_grad():
                model(images)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
    queue.put((statistics.median(times), peak_mb))


def _measure(impl: str, mode: str, args: argparse.Namespace, weights: str) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(impl, mode, args, weights, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"benchmark worker {impl}/{mode} failed with exit code {proc.exitcode}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="image side (2 square images per batch)")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each worker")
    args = parser.parse_args()

    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    with tempfile.TemporaryDirectory() as tmp:
        weights = str(Path(tmp) / "weights.pth")
        torch.save(reference.state_dict(), weights)
        del reference
        rows = []
        for mode, label, per_image in (("train", "train step [s]", 1.0), ("eval", "inference [s/image]", 0.5)):
            results = {impl: _measure(impl, mode, args, weights) for impl in ("ours", "torchvision")}
            rows.append((label, results["ours"][0] * per_image, results["torchvision"][0] * per_image))
            rows.append((f"peak RSS {mode} [MB]", results["ours"][1], results["torchvision"][1]))

    print(f"batch: 2 images {args.size}x{args.size}, CPU, {args.threads} threads, median of {args.iters}")
    print(f"{'metric':<26}{'ours':>12}{'torchvision':>14}{'ours/tv':>10}")
    for label, ours, theirs in rows:
        print(f"{label:<26}{ours:>12.3f}{theirs:>14.3f}{ours / theirs:>10.2f}")


if __name__ == "__main__":
    main()
