"""optimize_for_inference (modeling/fast_inference.py): the inference copy gives eager mode's detections.

The model is a random R18-FPN whose every BatchNorm holds trained-like statistics and affine
parameters (means and betas far from 0, variances and gammas far from 1), so folding really
changes the convolution weights; a fold that forgot eps, the mean or the bias would move boxes
by whole pixels. Checked with FrozenBatchNorm2d and eval-mode BatchNorm2d, at two image sizes.
"""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from maskrcnn.inference.export_graph import ExportWrapper, export_torchscript, run_exported
from maskrcnn.inference.optimize.fast_inference import BF16_TOLERANCE, fold_batchnorm, optimize_for_inference
from maskrcnn.inference.optimize.onednn_linear import OneDNNLinear
from maskrcnn.modeling.build import build_mask_rcnn
from maskrcnn.modeling.poolers import MultiScaleRoIAlign

SIZES = ((96, 128), (160, 112))


def trained_like_norms(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm2d / FrozenBatchNorm2d random non-trivial statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                c = m.running_mean.shape[0]
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 2.0 + 0.2)
                m.weight.copy_(torch.rand(c, generator=g) * 1.5 + 0.25)
                m.bias.copy_(torch.randn(c, generator=g) * 0.3)
    return net


def build_net(norm: str, seed: int = 0) -> nn.Module:
    """A tiny R18-FPN (32 channels) giving a few dozen detections on noise images (cf. tests/helpers/tiny_model.py)."""
    torch.manual_seed(seed)
    net = build_mask_rcnn(
        3,
        backbone={"name": "resnet18", "out_channels": 32, "norm": norm},
        rpn={"pre_nms_top_n_test": 100, "post_nms_top_n_test": 50},
        roi_heads={"score_thresh": 0.01, "representation_size": 64, "mask_layers": (32, 32), "detections_per_img": 30},
        transform={"min_size": 96, "max_size": 160},
    )
    # trained-like BatchNorm gives features of magnitude ~20: small predictor weights keep the
    # logits in a range where proposals, classes and mask probabilities depend on the image
    nn.init.normal_(net.rpn.head.cls_logits.weight, std=0.05)
    nn.init.normal_(net.rpn.head.bbox_pred.weight, std=0.003)
    nn.init.normal_(net.roi_heads.box_predictor.cls_score.weight, std=0.05)
    nn.init.normal_(net.roi_heads.box_predictor.bbox_pred.weight, std=0.003)
    nn.init.normal_(net.roi_heads.mask_predictor.mask_fcn_logits.weight, std=0.02)
    for pooler in (net.roi_heads.box_pooler, net.roi_heads.mask_pooler):
        pooler.canonical_scale = 48
    return trained_like_norms(net, seed).eval()


def _image(size: tuple[int, int], seed: int) -> torch.Tensor:
    """Tensor[3, H, W] float32 in [0, 1]: smooth noise plus a bright rectangle."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    image = torch.nn.functional.interpolate(
        torch.rand(1, 3, h // 8, w // 8, generator=g), size=(h, w), mode="bilinear", align_corners=False
    )[0]
    image[:, h // 4 : h // 2, w // 3 : w * 2 // 3] = 1.0
    return image


def _detect(net: nn.Module, images: list[torch.Tensor]) -> list[dict]:
    with torch.no_grad():
        return net(images)["detections"]


def assert_same_detections(fast: list[dict], eager: list[dict]) -> None:
    """Identical labels, boxes within 1e-3 px, scores within 1e-4, mask probabilities within 1e-3."""
    assert len(fast) == len(eager)
    for f, e in zip(fast, eager, strict=True):
        assert e["boxes"].shape[0] > 0, "the test model must detect something"
        assert torch.equal(f["labels"], e["labels"])
        torch.testing.assert_close(f["boxes"], e["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(f["scores"], e["scores"], atol=1e-4, rtol=0)
        torch.testing.assert_close(f["masks"], e["masks"], atol=1e-3, rtol=0)
        assert f["masks"].is_contiguous()


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
@pytest.mark.parametrize(
    "options",
    [
        {},  # fold_bn + channels_last + roi_align_threads + onednn_linear, the defaults
        {"fold_bn": True, "channels_last": False, "roi_align_threads": False, "onednn_linear": False},
        {"fold_bn": False, "channels_last": True, "roi_align_threads": False, "onednn_linear": False},
        {"fold_bn": False, "channels_last": False, "roi_align_threads": True, "onednn_linear": False},
        {"fold_bn": False, "channels_last": False, "roi_align_threads": False, "onednn_linear": True},
    ],
)
def test_fast_copy_gives_eager_detections(norm, options, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # roi_align_threads: split even on 1 core
    net = build_net(norm)
    fast = optimize_for_inference(net, **options)
    for size in SIZES:
        images = [_image(size, seed) for seed in (1, 2)]  # a batch of 2: batched postprocessing per image
        assert_same_detections(_detect(fast, images), _detect(net, images))


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
def test_folding_removes_every_backbone_norm_and_changes_the_weights(norm):
    net = build_net(norm)
    fast = optimize_for_inference(net, channels_last=False)
    norms = [m for m in fast.backbone.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    assert norms == []
    assert not torch.equal(fast.backbone.body.conv1.weight, net.backbone.body.conv1.weight)
    assert fast.backbone.body.conv1.bias is not None and net.backbone.body.conv1.bias is None
    # R18: stem + 8 BasicBlocks x 2 + 3 downsample paths
    assert fold_batchnorm(copy.deepcopy(net).backbone) == 1 + 16 + 3


def test_original_net_is_unchanged():
    net = build_net("bn")
    net.train()  # optimize_for_inference must not even switch the original's mode
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modules_before = [type(m) for m in net.modules()]
    fast = optimize_for_inference(net, fold_bn=True, channels_last=True, bf16=True)
    assert net.training and not fast.training
    after = net.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
        assert after[key].is_contiguous(), f"{key} was left channels_last"
    assert [type(m) for m in net.modules()] == modules_before
    assert all(p.requires_grad for p in net.parameters())
    assert not any(p.requires_grad for p in fast.parameters())
    assert "forward" not in vars(net.backbone)  # bf16 wraps the copy's forward, not the original's


def test_training_mode_batchnorm_is_not_folded():
    body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    assert fold_batchnorm(body) == 0 and isinstance(body[1], nn.BatchNorm2d)


def test_rejects_a_non_maskrcnn():
    with pytest.raises(TypeError, match="expected a MaskRCNN"):
        optimize_for_inference(nn.Linear(2, 2))


def test_bf16_stays_within_its_documented_tolerance():
    """bf16 changes numerics (module docstring): measured, not equal. The 5 best detections keep
    their labels and scores move by at most BF16_TOLERANCE["score"]."""
    net = build_net("frozen_bn")
    fast = optimize_for_inference(net, bf16=True)
    images = [_image(SIZES[0], 1)]
    eager, low = _detect(net, images)[0], _detect(fast, images)[0]
    assert low["boxes"].dtype == torch.float32 and low["masks"].dtype == torch.float32
    assert low["boxes"].shape[0] > 0
    # match each of eager's top detections to the bf16 detection of the same label with the highest IoU
    from torchvision.ops import box_iou

    iou = box_iou(eager["boxes"][:5], low["boxes"])
    iou[eager["labels"][:5, None] != low["labels"][None]] = 0
    best_iou, best = iou.max(dim=1)
    assert (best_iou >= BF16_TOLERANCE["top5_iou"]).all(), best_iou
    score_diff = (eager["scores"][:5] - low["scores"][best]).abs().max()
    assert score_diff <= BF16_TOLERANCE["score"], float(score_diff)


def test_export_of_the_fast_copy_matches_eager(tmp_path):
    net = build_net("bn")
    fast = optimize_for_inference(net)
    image = _image(SIZES[0], 1)
    path = export_torchscript(fast, tmp_path / "fast.pt", SIZES[0], example=image)
    with torch.no_grad():
        eager = ExportWrapper(net)(image)
    exported = run_exported(path, image)
    assert torch.equal(exported[1], eager[1])
    torch.testing.assert_close(exported[0], eager[0], atol=1e-3, rtol=0)
    torch.testing.assert_close(exported[2], eager[2], atol=1e-4, rtol=0)
    torch.testing.assert_close(exported[3], eager[3], atol=1e-3, rtol=0)


def test_fast_copy_switches_the_poolers_and_linear_layers_and_leaves_the_state_dict():
    net = build_net("frozen_bn")
    fast = optimize_for_inference(net, fold_bn=False, channels_last=False)
    poolers = [m for m in fast.modules() if isinstance(m, MultiScaleRoIAlign)]
    assert len(poolers) == 2 and all(p.forward_threads == 0 for p in poolers)
    linears = [m for m in fast.roi_heads.modules() if isinstance(m, nn.Linear)]
    assert linears and all(isinstance(m, OneDNNLinear) for m in linears)
    assert all(p.forward_threads == 1 for p in net.modules() if isinstance(p, MultiScaleRoIAlign))
    assert not any(isinstance(m, OneDNNLinear) for m in net.modules())
    assert fast.state_dict().keys() == net.state_dict().keys()
    off = optimize_for_inference(net, roi_align_threads=False, onednn_linear=False)
    assert not any(isinstance(m, OneDNNLinear) for m in off.modules())
    assert all(p.forward_threads == 1 for p in off.modules() if isinstance(p, MultiScaleRoIAlign))


def test_predict_inference_groups():
    """conf/inference/{eager,fast}.yaml: eager keeps the net, fast's options build the fast copy."""
    from helpers.config import compose
    from maskrcnn.inference.optimize.fast_inference import InferenceRoIHeads

    base = ["ckpt_path=unused.ckpt", "input=unused"]
    assert compose(base, config_name="predict").inference.options is None  # the default: eager
    options = compose([*base, "inference=fast"], config_name="predict").inference.options
    fast = optimize_for_inference(build_net("frozen_bn"), **options)
    assert isinstance(fast.roi_heads, InferenceRoIHeads)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in fast.modules())


@pytest.mark.slow  # inductor builds C++ kernels: 15 s with a warm cache, minutes without, on 2 cores
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler")
def test_compiled_copy_gives_eager_detections_without_a_graph_per_count():
    """compile=True (inductor, weights frozen) keeps eager's detections. Every image brings another
    number of proposals and detections: the RoI heads must not build a new graph for each count,
    and after a second image size (one dynamic backbone graph) a third builds nothing either."""
    import torch._dynamo

    torch._dynamo.reset()
    net = build_net("frozen_bn")
    fast = optimize_for_inference(net, compile=True)
    counts = []

    def check(size, seeds):
        images = [_image(size, seed) for seed in seeds]
        detections = _detect(fast, images)
        assert_same_detections(detections, _detect(net, images))
        counts.extend(len(d["boxes"]) for d in detections)

    check(SIZES[0], (1, 2))
    with torch._dynamo.config.patch(error_on_recompile=True):  # a recompile raises
        check(SIZES[0], (3, 4))
        check(SIZES[0], (5, 6))
    assert len(set(counts)) > 1, f"every batch gave the same detection counts {counts}: no new shape tried"
    check(SIZES[1], (1, 2))
    with torch._dynamo.config.patch(error_on_recompile=True):
        check((128, 96), (1, 2))


def test_mask_upsampling_as_one_matmul_equals_the_transposed_conv(monkeypatch):
    """InferenceRoIHeads runs conv5_mask (2x2 stride-2 ConvTranspose2d) + ReLU as one oneDNN
    matmul on the CPU; its mask probabilities must equal the transposed conv's, block layout and
    all, for boxes of every class."""
    from maskrcnn.inference.optimize import fast_inference

    net = build_net("bn")
    nn.init.normal_(net.roi_heads.mask_predictor.mask_fcn_logits.weight, std=0.5)  # spread the logits
    fast = optimize_for_inference(net)
    heads = fast.roi_heads
    with torch.no_grad():
        features = fast.backbone(_image((96, 128), 1)[None])
        boxes = [torch.tensor([[4.0, 6.0, 60.0, 50.0], [30.0, 20.0, 90.0, 95.0], [0.0, 0.0, 128.0, 96.0]])]
        labels = torch.tensor([1, 2, 3])
        calls = []
        real = fast_inference.onednn_linear
        monkeypatch.setattr(fast_inference, "onednn_linear", lambda *a, **k: calls.append(1) or real(*a, **k))
        blocks = heads.mask_probs(features, boxes, labels, [(96, 128)])
        assert calls, "the matmul path was not taken"
        monkeypatch.setattr(fast_inference, "onednn_linear", lambda *a, **k: None)  # the transposed conv
        deconv = heads.mask_probs(features, boxes, labels, [(96, 128)])
    assert blocks.shape == deconv.shape == (3, 1, heads.mask_size, heads.mask_size)
    assert 0.05 < float(deconv.std())  # the probabilities vary over the mask
    torch.testing.assert_close(blocks, deconv, atol=1e-6, rtol=0)
