"""Time and peak resident memory of our Mask R-CNN vs torchvision's, each (implementation, mode)
in a fresh spawned process so that its peak RSS is its own (``--task model --model-peak-rss``; CPU).
Same weights and batches as ``model_speed``."""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_module
import resource
import statistics
import tempfile
from pathlib import Path

import torch

from bench.model_speed import IMPLS, build_model, make_batch, reference_state, row_names, timed_step


def _worker(
    impl: str, mode: str, size: int, iters: int, warmup: int, threads: int, arch: str, weights: str, queue: mp.Queue
) -> None:
    torch.set_num_threads(threads)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model, loss_fn = build_model(impl, size, state, arch)
    images, targets = make_batch(size)
    times = [
        timed_step(model, loss_fn, images, targets, mode, "cpu", None, seed=step) for step in range(warmup + iters)
    ][warmup:]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
    queue.put((statistics.median(times), peak_mb))


def measure_in_fresh_process(
    impl: str,
    mode: str,
    size: int,
    weights: str,
    iters: int = 5,
    warmup: int = 1,
    threads: int = 2,
    arch: str = "resnet50",
) -> tuple[float, float]:
    """(median s per call, peak RSS MB) of one implementation and mode in a spawned process (CPU).

    ``weights`` is a file holding ``reference_state(arch=arch)`` (both implementations load it).
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(impl, mode, size, iters, warmup, threads, arch, weights, queue))
    proc.start()
    while True:  # a worker that dies (out of memory, a crash) never puts a result: do not wait forever
        try:
            result = queue.get(timeout=5.0)
            break
        except queue_module.Empty:
            if not proc.is_alive():
                raise RuntimeError(
                    f"benchmark worker {impl}/{mode} died with exit code {proc.exitcode} before reporting"
                ) from None
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"benchmark worker {impl}/{mode} failed with exit code {proc.exitcode}")
    return result


def model_peak_rss_rows(
    sizes, iters: int, warmup: int, threads: int, archs: tuple[str, ...] = ("resnet50",)
) -> list[tuple]:
    """Report rows: time and peak RSS per mode, each implementation and mode in its own process (CPU)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            weights = str(Path(tmp) / f"{arch}.pth")
            torch.save(reference_state(arch=arch), weights)
            name, baseline = row_names(arch)
            for size in sizes:
                for mode, label, per in (("train", "train step [s/iter]", 1), ("eval", "inference [s/image]", 2)):
                    r = {
                        impl: measure_in_fresh_process(impl, mode, size, weights, iters, warmup, threads, arch)
                        for impl in IMPLS
                    }
                    print(
                        f"model {name} {size}px {mode} (own process): ours {r['ours'][0]:.3f} s "
                        f"{r['ours'][1]:.0f} MB, torchvision {r['torchvision'][0]:.3f} s {r['torchvision'][1]:.0f} MB",
                        flush=True,
                    )
                    notes = f"torchvision {baseline}, same weights; cpu, {threads} threads; fresh process each"
                    rows.append(
                        (
                            "model",
                            f"{name} {label}, 2 img {size}x{size}",
                            r["ours"][0] / per,
                            r["torchvision"][0] / per,
                            f"{notes}; median of {iters}; lower is better",
                        )
                    )
                    rows.append(
                        (
                            "model",
                            f"{name} peak RSS {mode} [MB], 2 img {size}x{size}",
                            r["ours"][1],
                            r["torchvision"][1],
                            f"{notes}; whole process; lower is better",
                        )
                    )
    return rows
