"""Bilinear RoIAlign whose forward and backward split the RoIs over CPU threads.

Used by ``model.roi_align.backward_threads`` (training: forward and backward) and by the
inference copy of ``inference=fast`` (``forward_threads``: forward only, no autograd).

torchvision's CPU ``_roi_align_backward`` kernel is serial: it loops over every (RoI, channel,
bin, sample) and scatters into the feature gradient, recomputing the bilinear weights per channel.
Here each of ``threads`` workers runs the same kernel on its share of the RoIs into its own
zero-initialised gradient (the kernel releases the GIL), and the partial gradients are added.

The forward kernel is serial too; split over the RoIs it gives bit-identical outputs, since every
output element is computed by the same code from the same inputs, only in another thread.

Numerics: the forward is exactly torchvision's. The gradient has the same terms, but where RoIs
of different shares overlap a feature pixel their contributions are summed in another order
(relative differences ~1e-7; tests/ops/test_roi_align_threads.py). Memory: one extra feature-map-sized
gradient per extra thread during the backward.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import roi_align

_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="roi_align_backward")
    return _POOLS[threads]


def _splittable(feature: Tensor, threads: int) -> bool:
    """Whether torchvision's CPU kernels can run on shares of the RoIs: more than one thread, a CPU
    float32 feature, no autocast (torchvision's autocast wrapper handles the dtypes) and no tracing
    (the graph keeps one op)."""
    return (
        threads > 1
        and feature.device.type == "cpu"
        and feature.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_tracing()
    )


def _shares(count: int, threads: int) -> list[tuple[int, int]]:
    """Contiguous, non-empty [start, end) ranges splitting ``count`` RoIs over ``threads`` workers."""
    bounds = torch.linspace(0, count, threads + 1).round().long().tolist()
    return [(s, e) for s, e in zip(bounds, bounds[1:], strict=False) if e > s]


def roi_align_threaded_forward(
    feature: Tensor,
    rois: Tensor,
    output_size: tuple[int, ...],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    threads: int,
) -> Tensor:
    """torchvision's RoIAlign forward kernel run on ``threads`` shares of ``rois`` at once.

    Args:
        feature: Tensor[B, C, H, W] float, contiguous (NCHW).
        rois: Tensor[K, 5] float, batch index + xyxy in image pixels.

    Returns:
        Tensor[K, C, P, Q], bit-identical to ``torchvision.ops.roi_align``. No autograd graph.
    """
    ph, pw = output_size
    shares = _shares(rois.shape[0], threads)
    if len(shares) <= 1:
        return _forward_share(feature, rois, spatial_scale, ph, pw, sampling_ratio, aligned)
    jobs = [
        _pool(threads).submit(_forward_share, feature, rois[s:e], spatial_scale, ph, pw, sampling_ratio, aligned)
        for s, e in shares
    ]
    return torch.cat([job.result() for job in jobs])


def _forward_share(feature: Tensor, rois: Tensor, scale: float, ph: int, pw: int, ratio: int, aligned: bool) -> Tensor:
    # grad mode is per thread and on in a fresh worker: without no_grad the op would record a
    # graph for a feature that requires grad (inside the autograd Function), never used but kept alive
    with torch.no_grad():
        return torch.ops.torchvision.roi_align(feature, rois, scale, ph, pw, ratio, aligned)


def roi_align_forward_threads(
    feature: Tensor,
    rois: Tensor,
    output_size: tuple[int, ...],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    threads: int,
) -> Tensor:
    """``torchvision.ops.roi_align`` (same arguments) for inference, its RoIs split over ``threads``
    CPU threads (0: ``torch.get_num_threads()`` at call time).

    Falls back to torchvision's op where it cannot split or need not: a gradient is needed,
    a non-CPU or non-float32 feature, CPU autocast, tracing / compiling (the graph keeps one op).
    """
    threads = threads or torch.get_num_threads()
    split = (
        _splittable(feature, threads)
        and not feature.requires_grad
        and not rois.requires_grad
        and not torch.jit.is_scripting()
        and not torch.compiler.is_compiling()
    )
    if not split:
        return roi_align(feature, rois, output_size, spatial_scale, sampling_ratio, aligned)
    return roi_align_threaded_forward(
        feature.contiguous(),
        rois,
        tuple(output_size),
        float(spatial_scale),
        int(sampling_ratio),
        bool(aligned),
        int(threads),
    )


class _RoIAlignThreadedBackward(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        feature: Tensor,
        rois: Tensor,
        output_size: tuple[int, ...],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool,
        threads: int,
    ) -> Tensor:
        ctx.save_for_backward(rois)
        ctx.settings = (tuple(feature.shape), output_size, spatial_scale, sampling_ratio, aligned, threads)
        return roi_align_threaded_forward(feature, rois, output_size, spatial_scale, sampling_ratio, aligned, threads)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (rois,) = ctx.saved_tensors
        (b, c, h, w), (ph, pw), scale, ratio, aligned, threads = ctx.settings
        grad = grad.contiguous()
        shares = [(grad[s:e], rois[s:e]) for s, e in _shares(rois.shape[0], threads)]
        if len(shares) <= 1:
            out = torch.ops.torchvision._roi_align_backward(grad, rois, scale, ph, pw, b, c, h, w, ratio, aligned)
        else:
            jobs = [
                _pool(threads).submit(
                    torch.ops.torchvision._roi_align_backward, g, r, scale, ph, pw, b, c, h, w, ratio, aligned
                )
                for g, r in shares
            ]
            out = jobs[0].result()
            for job in jobs[1:]:
                out.add_(job.result())
        return out, None, None, None, None, None, None


def roi_align_threaded_backward(
    feature: Tensor,
    rois: Tensor,
    output_size: tuple[int, ...],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    threads: int,
) -> Tensor:
    """``torchvision.ops.roi_align`` (same arguments; ``rois``: Tensor[K, 5] float, batch index + xyxy
    in image pixels) with the forward and backward split over ``threads`` CPU threads.

    Falls back to torchvision's op when there is nothing to split: ``threads`` <= 1, no gradient
    needed, a non-CPU tensor (CUDA's backward kernel is already parallel), a non-float32 feature or
    CPU autocast (where torchvision's own autocast wrapper handles the dtypes).
    """
    if not (_splittable(feature, threads) and feature.requires_grad):
        return roi_align(feature, rois, output_size, spatial_scale, sampling_ratio, aligned)
    return _RoIAlignThreadedBackward.apply(
        feature.contiguous(),
        rois,
        tuple(output_size),
        float(spatial_scale),
        int(sampling_ratio),
        bool(aligned),
        int(threads),
    )
