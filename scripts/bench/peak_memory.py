"""Peak memory of mask pasting with many instances on large images: ours (chunked) vs torchvision;
and of ``src/predict.py`` on one large photo (``--task memory``, ``--predict-photo 6000x4000``).

Every case runs in a fresh Python process (``python -m bench.peak_memory CASE_JSON``)
so that its peak resident set size belongs to that case alone. The child records its resident
memory before pasting (interpreter + torch + inputs), resets the kernel's high-water mark, pastes,
and reads the peak (VmHWM), so ``peak - baseline`` is what pasting itself needed; the float32
output alone is ``N * H * W * 4`` bytes (``output_mb``).

The predict case writes a random-init ResNet-18-FPN checkpoint (800/1333 input, 100 detections per
image) and a noisy JPEG, then runs ``maskrcnn.inference.predict_images.predict`` on it: with
``score_thresh=0.5`` (a random model keeps nothing, the case of the original report) and ``0.0``
(all 100 masks pasted at full resolution). Its peak includes the interpreter, torch and the model.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

IMPLS = ("ours", "torchvision")


def parse_size(text: str) -> tuple[int, int]:
    """``"1333x800"`` -> ``(1333, 800)`` (width, height)."""
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def _status_mb(key: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process from /proc/self/status in MB (None off Linux)."""
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset this process's RSS high-water mark (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """Peak RSS of this process. VmHWM, not ``ru_maxrss``: on exec Linux carries the parent's peak
    into the child's ``ru_maxrss`` (subprocess spawns with vfork), so a child started by a big
    benchmark process would report the parent's peak."""
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def paste_case(
    impl: str, num: int, width: int, height: int, chunk_size: int = 64, mask_size: int = 28, seed: int = 0
) -> dict:
    """Paste ``num`` random M x M masks into a ``height x width`` image IN THIS PROCESS.

    Boxes have sides of 5-50% of the image, like detections of a crowded scene.

    Returns:
        {"baseline_mb", "peak_mb", "delta_mb", "output_mb", "seconds"}.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(num, 1, mask_size, mask_size, generator=g)  # Tensor[N, 1, M, M] float32
    wh = torch.rand(num, 2, generator=g) * 0.45 + 0.05
    wh = wh * torch.tensor([width, height])
    xy = torch.rand(num, 2, generator=g) * (torch.tensor([width, height]) - wh)
    boxes = torch.cat([xy, xy + wh], dim=1)  # Tensor[N, 4] float32 xyxy, inside the image
    # import both before the baseline so that neither import is charged to pasting
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from maskrcnn.modeling.postprocess import paste_masks

    if impl not in IMPLS:
        raise ValueError(f"paste_case: impl must be one of {IMPLS}, got {impl!r}")
    baseline = _status_mb("VmRSS") or _peak_rss_mb()  # resident before pasting
    _reset_peak()  # so that the peak below is the pasting peak, not an import-time transient
    start = time.perf_counter()
    if impl == "ours":
        out = paste_masks(masks, boxes, (height, width), chunk_size=chunk_size)
    else:
        out = paste_masks_in_image(masks, boxes, (height, width), padding=1)
    seconds = time.perf_counter() - start
    if tuple(out.shape) != (num, 1, height, width):
        raise RuntimeError(f"paste_case: {impl} returned shape {tuple(out.shape)}")
    peak = _peak_rss_mb()
    return {
        "baseline_mb": baseline,
        "peak_mb": peak,
        "delta_mb": peak - baseline,
        "output_mb": num * height * width * 4 / 2**20,
        "seconds": seconds,
    }


def measure_paste(
    impl: str, num: int, width: int, height: int, chunk_size: int = 64, threads: int = 2, timeout: float = 600
) -> dict:
    """Run ``paste_case`` in a fresh interpreter (clean RSS peak) and return its result dict."""
    return _run_child(
        {"impl": impl, "num": num, "width": width, "height": height, "chunk_size": chunk_size, "threads": threads},
        timeout,
    )


def run_memory_benchmark(
    instances=(100, 300), sizes=((1333, 800),), chunk_size: int = 64, threads: int = 2, skip_cases=()
) -> list[dict]:
    """Every (size, instances, impl) case in its own process.

    Args:
        sizes: (width, height) pairs.
        skip_cases: (width, height, num) triples not to run (e.g. too large for the machine).

    Returns:
        list of {"impl", "num", "width", "height", **paste_case result}.
    """
    rows = []
    for width, height in sizes:
        for num in instances:
            if (width, height, num) in skip_cases:
                continue
            for impl in IMPLS:
                result = measure_paste(impl, num, width, height, chunk_size, threads)
                rows.append({"impl": impl, "num": num, "width": width, "height": height, **result})
    return rows


def predict_case(width: int, height: int, score_thresh: float, min_size: int = 800, max_size: int = 1333) -> dict:
    """``predict`` on one ``width x height`` JPEG with a random-init model IN THIS PROCESS.

    Returns:
        {"peak_mb" (whole process), "baseline_mb" (before predict), "seconds", "detections"}.
    """
    import tempfile

    import numpy as np
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from PIL import Image

    from maskrcnn.inference.predict_images import predict

    torch.manual_seed(0)
    model = {
        "_target_": "maskrcnn.modeling.build.build_mask_rcnn",
        "num_classes": 3,
        "roi_heads": {"score_thresh": 0.0},
        "backbone": {"name": "resnet18", "pretrained": False, "norm": "bn", "trainable_layers": 5},
        "transform": {"min_size": min_size, "max_size": max_size},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        net = instantiate(model, _convert_="all")
        torch.save(
            {
                "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "run_config": {"model": model},
                "class_names": ["__background__", "a", "b", "c"],
            },
            tmp / "random.ckpt",
        )
        del net
        small = np.random.default_rng(0).integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        (tmp / "in").mkdir()
        Image.fromarray(small).resize((width, height), Image.BILINEAR).save(tmp / "in" / "photo.jpg", quality=90)
        del small
        cfg = OmegaConf.create(
            {
                "ckpt_path": str(tmp / "random.ckpt"),
                "input": str(tmp / "in"),
                "output": str(tmp / "out"),
                "device": "cpu",
                "batch_size": 1,
                "score_thresh": score_thresh,
            }
        )
        baseline = _status_mb("VmRSS") or _peak_rss_mb()
        _reset_peak()
        start = time.perf_counter()
        predict(cfg)
        seconds = time.perf_counter() - start
        detections = len(json.loads((tmp / "out" / "predictions.json").read_text()))
    return {"peak_mb": _peak_rss_mb(), "baseline_mb": baseline, "seconds": seconds, "detections": detections}


def _run_child(case: dict, timeout: float = 900) -> dict:
    import maskrcnn  # light: the package's __init__ imports nothing

    # the child imports bench and maskrcnn from where this process found them, installed or not
    roots = [str(Path(__file__).resolve().parents[1]), str(Path(maskrcnn.__file__).resolve().parents[1])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [*roots, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.peak_memory", json.dumps(case)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory case {case} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child(spec: str) -> None:
    args = json.loads(spec)
    import torch

    torch.set_num_threads(args.pop("threads"))
    if args.pop("case", "paste") == "predict":
        print(json.dumps(predict_case(**args)))
        return
    print(json.dumps(paste_case(**args)))


def memory_rows(instances, sizes, chunk_size: int, threads: int, max_output_gb: float) -> list[tuple]:
    """Report rows: pasting peak RSS and time per (size, instances) case, ours vs torchvision.

    Cases whose float32 output is above ``max_output_gb`` are skipped: torchvision holds the output
    twice (per-mask list + stacked copy), which would take a shared machine down.
    """
    too_big = [(w, h, n) for w, h in sizes for n in instances if n * w * h * 4 / 2**30 > max_output_gb]
    for w, h, n in too_big:
        print(f"memory: skipping {n} masks into {w}x{h} (output > --mem-max-output-gb {max_output_gb})")
    results = run_memory_benchmark(instances, sizes, chunk_size, threads, skip_cases=too_big)
    rows = []
    for i in range(0, len(results), 2):
        ours, tv = results[i], results[i + 1]
        case = f"paste {ours['num']} masks into {ours['width']}x{ours['height']}"
        rows.append(
            (
                "memory",
                f"{case}: peak RSS above pre-paste RSS [MB]",
                ours["delta_mb"],
                tv["delta_mb"],
                f"torchvision paste_masks_in_image; float32 output alone {ours['output_mb']:.0f} MB; "
                f"absolute peak RSS {ours['peak_mb']:.0f} vs {tv['peak_mb']:.0f} MB; ours chunk_size="
                f"{chunk_size}; fresh process each; lower is better",
            )
        )
        rows.append(("memory", f"{case}: time [s]", ours["seconds"], tv["seconds"], "same cases; lower is better"))
    return rows


def predict_rows(width: int, height: int, threads: int, thresholds=(0.5, 0.0)) -> list[tuple]:
    """Report rows: peak RSS of ``predict`` on one ``width x height`` JPEG per score threshold (no baseline)."""
    rows = []
    for thresh in thresholds:
        r = _run_child(
            {"case": "predict", "width": width, "height": height, "score_thresh": thresh, "threads": threads}
        )
        print(
            f"memory: src/predict.py {width}x{height}, score_thresh={thresh}: {r['detections']} kept, "
            f"peak RSS {r['peak_mb']:.0f} MB",
            flush=True,
        )
        rows.append(
            (
                "memory",
                f"src/predict.py on one {width}x{height} JPEG, score_thresh={thresh}: peak RSS [MB]",
                r["peak_mb"],
                None,
                f"random-init R18-FPN at 800/1333; {r['detections']} detections kept; {r['baseline_mb']:.0f} MB "
                f"before predict (interpreter, torch, model); {r['seconds']:.1f} s; fresh process; lower is better",
            )
        )
    return rows


if __name__ == "__main__":
    _child(sys.argv[1])
