"""Speed (and peak memory) of our Mask R-CNN vs torchvision's, same random weights (``--task model``).

``arch="resnet101"`` compares against torchvision's ``MaskRCNN(resnet_fpn_backbone("resnet101"))``
built the way ``maskrcnn_resnet50_fpn(weights=None)`` builds its R50 (BatchNorm, all layers trainable).

``time_model_pair`` / ``model_rows`` time both models in ONE process, iterations interleaved
ours / torchvision so that background load slows both equally; CPU or CUDA, AMP. Peak memory
(``--model-peak-rss``, each model in a fresh process) is in ``model_peak_rss.py``.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import time

import torch

NUM_CLASSES_INCL_BG = 91
IMPLS = ("ours", "torchvision")
CHANNELS_LAST = "ours, channels_last"  # model.channels_last=true (ops/memory_format.py)
# + model.roi_align.backward_threads=2 (ops/roi_align_threads.py)
CHANNELS_LAST_THREADS = "ours, channels_last + backward_threads"
# nn.Module.compile() of the backbone, RPN head and box / mask heads (fast_inference.heavy_parts);
# the data-dependent sampling / NMS code between them stays eager
COMPILE = "ours, compile"
CHANNELS_LAST_COMPILE = "ours, channels_last + compile"
_SUFFIX = {
    CHANNELS_LAST: " (model.channels_last=true)",
    CHANNELS_LAST_THREADS: " (model.channels_last=true model.roi_align.backward_threads=2)",
    COMPILE: " (torch.compile)",
    CHANNELS_LAST_COMPILE: " (model.channels_last=true + torch.compile)",
}
ARCHS = ("resnet50", "resnet101")


def make_batch(size: int, seed: int = 0, batch: int = 2) -> tuple[list[torch.Tensor], list[dict]]:
    """``batch`` size x size images with 3, 1, 3, 1, ... box/mask instances.

    Returns:
        images: list of ``batch`` Tensor[3, size, size] float32 in [0, 1].
        targets: list of ``batch`` dicts: boxes Tensor[N, 4] float32 xyxy inside the image,
            labels Tensor[N] int64 in 1..90, masks Tensor[N, size, size] uint8 (box-filled).
    """
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, size, size, generator=g) for _ in range(batch)]
    targets = []
    for num in ((3, 1) * batch)[:batch]:
        xy = torch.rand(num, 2, generator=g) * size * 0.5
        wh = torch.rand(num, 2, generator=g) * size * 0.4 + min(16, size // 8)
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1).floor()
        masks = torch.zeros(num, size, size, dtype=torch.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[i, y0:y1, x0:x1] = 1
        labels = torch.randint(1, NUM_CLASSES_INCL_BG, (num,), generator=g)
        targets.append({"boxes": boxes, "labels": labels, "masks": masks})
    return images, targets


def _torchvision_model(arch: str, size: int | None = None) -> torch.nn.Module:
    from torch import nn
    from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    sizes = {} if size is None else {"min_size": size, "max_size": size}
    if arch == "resnet50":
        return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **sizes)
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    backbone = resnet_fpn_backbone(backbone_name=arch, weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5)
    return MaskRCNN(backbone, num_classes=NUM_CLASSES_INCL_BG, **sizes)


def build_model(impl: str, size: int, state: dict, arch: str = "resnet50") -> tuple[torch.nn.Module, object]:
    """Model loaded with ``state`` and a ``loss(model, images, targets) -> scalar`` function."""
    if impl == "torchvision":
        model = _torchvision_model(arch, size)
        model.load_state_dict(state)
        return model, lambda m, im, t: sum(m(im, t).values())

    from bench.torchvision_compat import torchvision_compatible_mask_rcnn
    from maskrcnn.losses import build_criterion

    model = torchvision_compatible_mask_rcnn(
        NUM_CLASSES_INCL_BG, transform={"min_size": size, "max_size": size}, backbone_name=arch
    )
    model.load_state_dict(state)
    if impl in (CHANNELS_LAST, CHANNELS_LAST_THREADS, CHANNELS_LAST_COMPILE):
        from maskrcnn.ops.memory_format import use_channels_last

        use_channels_last(model)
    if impl == CHANNELS_LAST_THREADS:
        model.roi_heads.box_pooler.backward_threads = model.roi_heads.mask_pooler.backward_threads = 2
    if impl in (COMPILE, CHANNELS_LAST_COMPILE):
        from maskrcnn.inference.optimize.fast_inference import compile_heavy_parts, heavy_parts

        compile_heavy_parts(heavy_parts(model))  # trainable weights: no freezing
    criterion = build_criterion("ce")
    return model, lambda m, im, t: sum(criterion(m(im, t)["loss_inputs"]).values())


def reference_state(
    seed: int = 0, arch: str = "resnet50", trained_like_size: int | None = None, device: str = "cpu"
) -> dict:
    """Random (seeded) state dict of torchvision's model for ``arch``; loaded into both models.

    ``trained_like_size``: make the weights behave like trained ones (``trained_like_weights``:
    non-trivial BatchNorm statistics, predictors calibrated on ``make_batch(trained_like_size)``'s
    first image, on ``device``), so that inference keeps ~1000 proposals and ~100 detections per
    image as a trained model does instead of the few that saturated random weights leave.
    """
    torch.manual_seed(seed)
    model = _torchvision_model(arch)
    if trained_like_size is None:
        return model.state_dict()
    from bench.trained_like_weights import calibrate_predictors, trained_like_state

    model.load_state_dict(trained_like_state(model.state_dict(), seed))
    model.to(device)
    calibrate_predictors(model, make_batch(trained_like_size, seed)[0][0].to(device))
    return {k: v.cpu() for k, v in model.state_dict().items()}


def _autocast(device: str, amp: str | None):
    if amp is None:
        return contextlib.nullcontext()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[amp]
    return torch.autocast(device_type=device, dtype=dtype)


def timed_step(model, loss_fn, images, targets, mode: str, device: str, amp: str | None, seed: int) -> float:
    """One timed train step (forward + backward) or inference call; seconds."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    if mode == "train":
        model.train()
        model.zero_grad(set_to_none=True)
        torch.manual_seed(seed)  # same proposal / RoI sampling draws for both implementations
        with _autocast(device, amp):
            loss = loss_fn(model, images, targets)
        loss.backward()
    else:
        infer(model, images, device, amp)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def infer(model, images, device: str, amp: str | None) -> list[dict]:
    """Eval-mode detections of ``images``: per image a dict of boxes / labels / scores / masks."""
    model.eval()
    with torch.no_grad(), _autocast(device, amp):
        out = model(images)
    return out if isinstance(out, list) else out["detections"]


def time_model_pair(
    size: int,
    mode: str,
    iters: int = 5,
    warmup: int = 1,
    device: str = "cpu",
    amp: str | None = None,
    state: dict | None = None,
    arch: str = "resnet50",
    impls: tuple[str, ...] = IMPLS,
    batch: int = 2,
    detections: dict | None = None,
) -> dict[str, float]:
    """Median seconds per call of ours vs torchvision (same weights), iterations interleaved.

    Args:
        size: side of the square images of the batch (models neither up- nor down-scale them).
        mode: "train" (forward + backward incl. losses) or "eval" (inference), ``batch`` images.
        iters / warmup: timed / untimed calls per implementation; the order ours-first /
            torchvision-first alternates between iterations.
        amp: None, "fp16" or "bf16" (autocast).
        state: weights to load (default: ``reference_state(arch=arch)``).
        arch: "resnet50" or "resnet101" backbone.
        impls: which models to time: "ours", "torchvision", ``CHANNELS_LAST``, ``CHANNELS_LAST_THREADS``,
            ``COMPILE``, ``CHANNELS_LAST_COMPILE``.
        batch: images per call (``make_batch``).
        detections: eval mode: filled with {impl: per-image detection dicts (float32, CPU)} from one
            more, untimed call of each model (the same models, so nothing is rebuilt or recompiled).

    Returns:
        {impl: median s per call} for every impl of ``impls``.
    """
    if mode not in ("train", "eval"):
        raise ValueError(f"time_model_pair: mode must be 'train' or 'eval', got {mode!r}")
    state = reference_state(arch=arch) if state is None else state
    images, targets = make_batch(size, batch=batch)
    images = [im.to(device) for im in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    models = {impl: build_model(impl, size, state, arch) for impl in impls}
    for model, _ in models.values():
        model.to(device)
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    for step in range(warmup + iters):
        order = impls if step % 2 == 0 else impls[::-1]
        for impl in order:
            model, loss_fn = models[impl]
            seconds = timed_step(model, loss_fn, images, targets, mode, device, amp, seed=step)
            if step >= warmup:
                times[impl].append(seconds)
    if detections is not None and mode == "eval":
        for impl, (model, _) in models.items():
            detections[impl] = [{k: v.float().cpu() for k, v in d.items()} for d in infer(model, images, device, amp)]
    return {impl: statistics.median(t) for impl, t in times.items()}


def detection_differences(detections: dict[str, list[dict]]) -> dict[str, str]:
    """Per impl other than torchvision: its detections (``time_model_pair(detections=...)``)
    compared with torchvision's (``inference.compare_detections``, worst image), as report text:
    "boxes <= 3e-05 px, scores <= 1e-06, masks <= 2e-05, same labels, 100-100 detections/image"
    (the fewest and most detections of an image)."""
    from bench.inference import compare_detections

    outputs = dict(detections)
    reference = outputs.pop("torchvision")
    text = {}
    for impl, dets in outputs.items():
        counts = [(len(a["boxes"]), len(b["boxes"])) for a, b in zip(dets, reference, strict=True)]
        if any(a != b for a, b in counts):
            text[impl] = "detections/image " + ", ".join(f"{a} vs {b}" for a, b in counts)
            continue
        diffs = [compare_detections(a, b) for a, b in zip(dets, reference, strict=True)]
        worst = {k: max(d[k] for d in diffs) for k in ("boxes", "scores", "masks")}
        labels = "same labels" if all(d["labels_equal"] for d in diffs) else "labels DIFFER"
        text[impl] = (
            f"boxes <= {worst['boxes']:.1g} px, scores <= {worst['scores']:.1g}, masks <= "
            f"{worst['masks']:.1g}, {labels}, {min(a for a, _ in counts)}-{max(a for a, _ in counts)} "
            "detections/image"
        )
    return text


def row_names(arch: str) -> tuple[str, str]:
    """("R50-FPN", "maskrcnn_resnet50_fpn"): our row label and torchvision's model."""
    name = "R" + arch.removeprefix("resnet") + "-FPN"
    return name, "maskrcnn_resnet50_fpn" if arch == "resnet50" else f"MaskRCNN({arch} FPN)"


def _impls(mode: str, device: str, compile: bool) -> tuple[str, ...]:  # noqa: A002
    if mode == "eval":  # channels_last: cuDNN's NHWC kernels on a GPU; CPU inference has inference=fast
        return (*IMPLS, *((CHANNELS_LAST,) if device == "cuda" else ()), *((COMPILE,) if compile else ()))
    threads = (CHANNELS_LAST_THREADS,) if device == "cpu" else ()  # CPU RoIAlign kernels only
    return (*IMPLS, CHANNELS_LAST, *threads, *((COMPILE, CHANNELS_LAST_COMPILE) if compile else ()))


def model_rows(
    sizes,
    iters: int,
    warmup: int,
    device: str,
    amp: str | None,
    archs: tuple[str, ...] = ("resnet50",),
    batches: tuple[int, ...] = (2,),
    compile: bool = False,
    trained_like: bool = False,
) -> list[tuple]:  # noqa: A002
    """Report rows: train step [s/iter] and inference [s/image] per arch, size and batch (images per
    call), interleaved timing; ``compile`` adds torch.compile'd variants of ours; ``trained_like``
    uses ``reference_state(trained_like_size=size)`` weights."""
    where = f"{device}{', autocast ' + amp if amp else ''}"
    rows = []
    for arch in archs:
        name, baseline = row_names(arch)
        for size in sizes:
            state = reference_state(arch=arch, trained_like_size=size if trained_like else None, device=device)
            weights = "same trained-like weights" if trained_like else "same weights"
            for batch, mode in itertools.product(batches, ("train", "eval")):
                label, per = ("train step [s/iter]", 1) if mode == "train" else ("inference [s/image]", batch)
                impls = _impls(mode, device, compile)
                detections: dict = {}
                t = time_model_pair(
                    size,
                    mode,
                    iters,
                    warmup,
                    device,
                    amp,
                    state,
                    arch=arch,
                    impls=impls,
                    batch=batch,
                    detections=detections,
                )
                print(
                    f"model {name} {size}px {mode} batch {batch}: " + ", ".join(f"{k} {v:.4f} s" for k, v in t.items()),
                    flush=True,
                )
                same = detection_differences(detections) if mode == "eval" else {}
                for impl, suffix in ((i, _SUFFIX.get(i, "")) for i in impls if i != "torchvision"):
                    rate = (
                        f"= {batch / t[impl]:.1f} vs {batch / t['torchvision']:.1f} images/s; "
                        if mode == "train"
                        else f"vs torchvision: {same[impl]}; "
                    )
                    rows.append(
                        (
                            "model",
                            f"{name} {label}{suffix}, {batch} img {size}x{size}",
                            t[impl] / per,
                            t["torchvision"] / per,
                            f"torchvision {baseline}, {weights}; {where}; median of {iters}; {rate}lower is better",
                        )
                    )
    return rows
