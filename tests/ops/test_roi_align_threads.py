"""roi_align.backward_threads and the inference copy's forward_threads (modeling/roi_align_threads.py):
the forward is torchvision's exactly, the gradient equals torchvision's up to the order of float32
sums, and the options reach the poolers."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

from helpers.config import compose
from maskrcnn.modeling.poolers import MultiScaleRoIAlign
from maskrcnn.ops import roi_align_threads
from maskrcnn.ops.roi_align_threads import roi_align_forward_threads, roi_align_threaded_backward


def _rois(num: int, batch: int, size: float, seed: int = 0) -> torch.Tensor:
    """Tensor[num, 5]: batch index, then xyxy boxes inside a size x size image (many overlap)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num, 2, generator=g) * size * 0.7
    wh = torch.rand(num, 2, generator=g) * size * 0.3 + 2
    index = torch.randint(0, batch, (num, 1), generator=g).float()
    return torch.cat([index, xy, xy + wh], dim=1)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("aligned", [False, True])
def test_forward_exact_and_gradient_within_float32_reordering(threads, aligned):
    g = torch.Generator().manual_seed(1)
    feature = torch.randn(2, 8, 24, 32, generator=g)
    rois = _rois(50, 2, 96.0)
    upstream = torch.randn(50, 8, 7, 7, generator=g)
    results = []
    for fn in (
        lambda f: roi_align(f, rois, (7, 7), 0.25, 2, aligned),
        lambda f: roi_align_threaded_backward(f, rois, (7, 7), 0.25, 2, aligned, threads),
    ):
        f = feature.clone().requires_grad_(True)
        out = fn(f)
        results.append(type(out.grad_fn).__name__)
        (out * upstream).sum().backward()
        results.append((out.detach(), f.grad))
    ref_fn, (ref_out, ref_grad), threaded_fn, (out, grad) = results
    assert "RoIAlignThreadedBackward" in threaded_fn and "RoIAlignThreadedBackward" not in ref_fn
    # the worker threads record no graph of their own (grad mode is per thread; the autograd
    # Function's forward calls this with a feature that requires grad)
    shares = roi_align_threads.roi_align_threaded_forward(
        feature.clone().requires_grad_(True), rois, (7, 7), 0.25, 2, aligned, threads
    )
    assert shares.grad_fn is None and not shares.requires_grad
    assert torch.equal(out, ref_out)
    assert grad.shape == ref_grad.shape and grad.is_contiguous()
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)
    assert ref_grad.abs().sum() > 0


def test_falls_back_to_torchvision_without_a_gradient_or_with_one_thread():
    feature = torch.randn(1, 4, 16, 16)
    rois = _rois(5, 1, 64.0)
    ref = roi_align(feature, rois, (7, 7), 0.25, 2, True)
    assert torch.equal(roi_align_threaded_backward(feature, rois, (7, 7), 0.25, 2, True, 4), ref)
    f = feature.clone().requires_grad_(True)
    out = roi_align_threaded_backward(f, rois, (7, 7), 0.25, 2, True, 1)
    assert "RoIAlignThreadedBackward" not in type(out.grad_fn).__name__


def test_fewer_rois_than_threads_and_no_rois():
    feature = torch.randn(1, 4, 16, 16, requires_grad=True)
    for num in (1, 0):
        rois = _rois(num, 1, 64.0)
        out = roi_align_threaded_backward(feature, rois, (7, 7), 0.25, 2, True, 4)
        out.sum().backward()
        assert out.shape == (num, 4, 7, 7) and feature.grad.shape == feature.shape


def test_pooler_validates_and_config_reaches_both_poolers():
    with pytest.raises(ValueError, match="backward_threads"):
        MultiScaleRoIAlign(backward_threads=0)
    from hydra.utils import instantiate

    net = instantiate(compose(["model.roi_align.backward_threads=2"]).model, _convert_="all")
    assert net.roi_heads.box_pooler.backward_threads == 2 and net.roi_heads.mask_pooler.backward_threads == 2
    assert compose([]).model.roi_align.backward_threads == 1


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("aligned", [False, True])
def test_inference_forward_split_over_threads_is_bit_identical(threads, aligned, monkeypatch):
    submitted = []
    real_pool = roi_align_threads._pool

    def spy(n):
        submitted.append(n)
        return real_pool(n)

    monkeypatch.setattr(roi_align_threads, "_pool", spy)
    feature = torch.randn(2, 8, 24, 32, generator=torch.Generator().manual_seed(2))
    rois = _rois(40, 2, 96.0, seed=3)
    with torch.no_grad():
        out = roi_align_forward_threads(feature, rois, (7, 7), 0.25, 2, aligned, threads)
    assert submitted == [threads] * threads  # really split: one job per thread
    assert torch.equal(out, roi_align(feature, rois, (7, 7), 0.25, 2, aligned))


def test_inference_forward_falls_back_when_a_gradient_is_needed_or_one_thread(monkeypatch):
    monkeypatch.setattr(roi_align_threads, "_pool", lambda n: pytest.fail("no split expected"))
    feature = torch.randn(1, 4, 16, 16)
    rois = _rois(6, 1, 64.0)
    ref = roi_align(feature, rois, (7, 7), 0.25, 2, False)
    assert torch.equal(roi_align_forward_threads(feature, rois, (7, 7), 0.25, 2, False, 1), ref)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert torch.equal(roi_align_forward_threads(feature, rois, (7, 7), 0.25, 2, False, 0), ref)  # 0 = torch's
    f = feature.clone().requires_grad_(True)
    out = roi_align_forward_threads(f, rois, (7, 7), 0.25, 2, False, 4)
    assert out.grad_fn is not None  # torchvision's op, with its autograd


def test_pooler_forward_threads_gives_the_same_pooled_features():
    features = {str(i): torch.randn(1, 8, 64 // 2**i, 64 // 2**i) for i in range(4)}
    boxes = [torch.tensor([[0.0, 0.0, 200.0, 200.0], [10.0, 20.0, 40.0, 60.0], [5.0, 5.0, 120.0, 90.0]])]
    pooler = MultiScaleRoIAlign(output_size=7)
    with torch.no_grad():
        ref = pooler(features, boxes, [(256, 256)])
        pooler.forward_threads = 2
        assert torch.equal(pooler(features, boxes, [(256, 256)]), ref)


def test_inference_forward_with_fewer_rois_than_threads_and_none():
    feature = torch.randn(1, 4, 16, 16)
    for num in (1, 0):
        rois = _rois(num, 1, 64.0)
        out = roi_align_forward_threads(feature, rois, (7, 7), 0.25, 2, True, 4)
        assert out.shape == (num, 4, 7, 7)
        assert torch.equal(out, roi_align(feature, rois, (7, 7), 0.25, 2, True))
