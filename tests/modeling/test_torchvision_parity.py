"""Our MaskRCNN vs torchvision's maskrcnn_resnet50_fpn: weights, detections, losses; plus robustness."""

import copy
from collections import OrderedDict

import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

from bench.torchvision_compat import torchvision_compatible_mask_rcnn
from maskrcnn.errors import CheckpointError
from maskrcnn.losses import build_criterion
from maskrcnn.modeling.build import build_mask_rcnn
from maskrcnn.modeling.checkpoint import load_torchvision_checkpoint
from maskrcnn.modeling.roi_heads import RoIHeads

TV_LOSS_NAMES = {
    "loss_objectness": "loss_objectness",
    "loss_rpn_box": "loss_rpn_box_reg",
    "loss_classifier": "loss_classifier",
    "loss_box": "loss_box_reg",
    "loss_mask": "loss_mask",
}
SIZES = {"min_size": 192, "max_size": 256}


def _target(height: int, width: int, num: int, seed: int, image_id: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    boxes, masks = [], torch.zeros(num, height, width, dtype=torch.uint8)
    for i in range(num):
        x0 = int(torch.randint(0, width // 2, (1,), generator=g))
        y0 = int(torch.randint(0, height // 2, (1,), generator=g))
        x1 = x0 + int(torch.randint(12, width // 2, (1,), generator=g))
        y1 = y0 + int(torch.randint(12, height // 2, (1,), generator=g))
        boxes.append([x0, y0, x1, y1])
        masks[i, y0 + 2 : y1 - 2, x0 + 1 : x1 - 3] = 1
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.randint(1, 4, (num,), generator=g),
        "masks": masks,
        "image_id": image_id,
    }


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    # score_thresh 0 so random weights still give detections; smaller RoI budgets (set identically on
    # both models) keep the 256-channel mask head affordable on CPU
    tv = maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=4,
        box_score_thresh=0.0,
        box_detections_per_img=25,
        box_batch_size_per_image=128,
        rpn_post_nms_top_n_train=500,
        rpn_post_nms_top_n_test=300,
        **SIZES,
    )
    ours = torchvision_compatible_mask_rcnn(
        4,
        transform=dict(SIZES),
        rpn={"post_nms_top_n_train": 500, "post_nms_top_n_test": 300},
        roi_heads={"score_thresh": 0.0, "detections_per_img": 25, "batch_size_per_image": 128},
    )
    ours.load_state_dict(tv.state_dict(), strict=True)
    return tv, ours


def _small_model(num_classes: int = 3, **kwargs) -> torch.nn.Module:
    kwargs.setdefault("transform", {"min_size": 128, "max_size": 192, "resize_in_training": False})
    return build_mask_rcnn(num_classes, backbone={"name": "resnet18", "norm": "frozen_bn"}, **kwargs)


def test_coco_91_class_state_dict_loads_strict():
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    ours = build_mask_rcnn(90, backbone={"name": "resnet50", "norm": "bn"})  # 90 foreground + background
    assert ours.roi_heads.box_predictor.cls_score.out_features == 91
    ours.load_state_dict(tv.state_dict(), strict=True)
    theirs = tv.state_dict()
    assert set(ours.state_dict()) == set(theirs)
    assert all(torch.equal(v, theirs[k]) for k, v in ours.state_dict().items())


def test_eval_parity(models):
    tv, ours = models
    tv.eval(), ours.eval()
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, h, w, generator=g) for h, w in ((200, 260), (240, 180), (150, 300))]
    with torch.no_grad():
        expected = tv(images)
        got = ours(images)["detections"]
    for image, e, o in zip(images, expected, got, strict=True):
        assert len(o["boxes"]) == len(e["boxes"]) > 0
        assert o["masks"].shape == (len(e["boxes"]), 1, *image.shape[-2:])
        torch.testing.assert_close(o["boxes"], e["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(o["scores"], e["scores"], atol=1e-4, rtol=0)
        assert torch.equal(o["labels"], e["labels"])
        torch.testing.assert_close(o["masks"], e["masks"], atol=1e-4, rtol=0)


def test_training_losses_and_gradients_match(models):
    tv, ours = models
    tv.train(), ours.train()
    g = torch.Generator().manual_seed(2)
    images = [torch.rand(3, 200, 260, generator=g), torch.rand(3, 240, 180, generator=g)]
    targets = [_target(200, 260, 3, seed=3, image_id=7), _target(240, 180, 0, seed=4, image_id=8)]
    criterion = build_criterion("ce")

    torch.manual_seed(5)  # same RNG stream: training resize scale, RPN and RoI sampling
    expected = tv(images, copy.deepcopy(targets))
    torch.manual_seed(5)
    out = ours(images, copy.deepcopy(targets))
    assert set(out) == {"loss_inputs"}
    losses = criterion(out["loss_inputs"])
    for ours_name, tv_name in TV_LOSS_NAMES.items():
        torch.testing.assert_close(losses[ours_name], expected[tv_name], atol=1e-4, rtol=1e-4)
    assert out["loss_inputs"]["mask"]["logits"].shape[0] > 0

    tv.zero_grad(), ours.zero_grad()
    sum(expected.values()).backward()
    sum(losses.values()).backward()
    for name in (
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.mask_predictor.mask_fcn_logits.weight",
        "rpn.head.bbox_pred.weight",
        "backbone.fpn.layer_blocks.0.0.weight",
    ):
        mine, theirs = ours.get_parameter(name).grad, tv.get_parameter(name).grad
        torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-3, msg=name)


def test_roi_heads_zero_proposals_and_zero_gt_match_torchvision(models):
    tv, ours = models
    g = torch.Generator().manual_seed(6)
    feats = OrderedDict((str(i), torch.randn(2, 256, 32 // 2**i, 32 // 2**i, generator=g)) for i in range(4))
    xy = torch.rand(30, 2, generator=g) * 90
    proposals = [torch.cat([xy, xy + torch.rand(30, 2, generator=g) * 30 + 4], 1), torch.zeros(0, 4)]
    sizes = [(128, 128), (120, 128)]
    tv.eval(), ours.eval()
    with torch.no_grad():
        expected, _ = tv.roi_heads(feats, proposals, sizes)
        got, loss_inputs = ours.roi_heads(feats, proposals, sizes)
    assert loss_inputs is None and len(got[1]["boxes"]) == 0 and len(got[0]["boxes"]) > 0
    for e, o in zip(expected, got, strict=True):
        for key in ("boxes", "scores", "labels", "masks"):
            torch.testing.assert_close(o[key], e[key], atol=1e-5, rtol=0)

    # training: image 0 has gt, image 1 has neither proposals nor gt (zero RoIs in total)
    targets = [_target(128, 128, 2, seed=7), _target(120, 128, 0, seed=8)]
    tv.roi_heads.train(), ours.roi_heads.train()
    try:
        torch.manual_seed(9)
        _, tv_losses = tv.roi_heads(feats, proposals, sizes, copy.deepcopy(targets))
        torch.manual_seed(9)
        _, inputs = ours.roi_heads(feats, proposals, sizes, copy.deepcopy(targets))
    finally:
        tv.roi_heads.eval(), ours.roi_heads.eval()
    crit = build_criterion("ce")
    torch.testing.assert_close(crit.classifier(inputs["roi"]), tv_losses["loss_classifier"], atol=1e-5, rtol=0)
    torch.testing.assert_close(crit.box(inputs["roi"]), tv_losses["loss_box_reg"], atol=1e-5, rtol=0)
    torch.testing.assert_close(crit.mask(inputs["mask"]), tv_losses["loss_mask"], atol=1e-5, rtol=0)


def test_crowd_regions_are_ignored_and_no_sampling_keeps_all(models):
    _, ours = models
    parts = {k: getattr(ours.roi_heads, k) for k in ("box_pooler", "box_head", "box_predictor")}
    parts.update({k: getattr(ours.roi_heads, k) for k in ("mask_pooler", "mask_head", "mask_predictor")})
    heads = RoIHeads(**parts, batch_size_per_image=None).train()
    g = torch.Generator().manual_seed(17)
    feats = OrderedDict((str(i), torch.randn(1, 256, 32 // 2**i, 32 // 2**i, generator=g)) for i in range(4))
    proposals = [
        torch.tensor(
            [
                [10.0, 10, 50, 50],
                [12, 11, 49, 52],  # on the gt
                [80, 80, 120, 120],
                [82, 79, 118, 121],
                [85, 85, 119, 117],  # on the crowd region
                [60, 5, 100, 30],
            ]  # plain background
        )
    ]
    target = _target(128, 128, 1, seed=18)
    target["boxes"] = torch.tensor([[10.0, 10, 50, 50]])
    target["crowd_boxes"] = torch.tensor([[80.0, 80, 120, 120]])
    _, inputs = heads(feats, proposals, [(128, 128)], [target])
    # 6 proposals + 1 gt box - 3 on the crowd region; labels: 3 positives (2 + gt) and 1 negative
    assert sorted(inputs["roi"]["labels"].tolist()) == [0] + [int(target["labels"][0])] * 3
    assert inputs["mask"]["targets"].shape == (3, 28, 28)


def test_checkpoint_loading(tmp_path):
    torch.manual_seed(10)
    source = _small_model(3)
    state = source.state_dict()
    # the legacy names of old torchvision files are renamed on load
    legacy = OrderedDict()
    for k, v in state.items():
        k = k.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for i in range(4):
            k = k.replace(f"roi_heads.mask_head.{i}.0.", f"roi_heads.mask_head.mask_fcn{i + 1}.")
        legacy[k] = v
    assert "roi_heads.mask_head.mask_fcn1.weight" in legacy
    torch.save({"model": legacy}, tmp_path / "legacy.pth")
    target = _small_model(3)
    assert load_torchvision_checkpoint(target, tmp_path / "legacy.pth") == []
    assert all(torch.equal(v, state[k]) for k, v in target.state_dict().items())

    # different class count: class-specific layers keep their fresh init, the rest loads
    torch.save(state, tmp_path / "raw.pth")
    other = build_mask_rcnn(5, backbone={"name": "resnet18", "norm": "frozen_bn"}, init_from=str(tmp_path / "raw.pth"))
    assert other.roi_heads.box_predictor.cls_score.out_features == 6
    assert torch.equal(other.roi_heads.mask_head[0][0].weight, state["roi_heads.mask_head.0.0.weight"])
    skipped = load_torchvision_checkpoint(_small_model(5), tmp_path / "raw.pth")
    class_specific = ("box_predictor.cls_score", "box_predictor.bbox_pred", "mask_predictor.mask_fcn_logits")
    assert sorted(skipped) == sorted(k for k in state if any(p in k for p in class_specific))
    assert len(skipped) == 6

    wrong = build_mask_rcnn(3, backbone={"name": "resnet34", "norm": "frozen_bn"})
    with pytest.raises(
        CheckpointError,
        match=r"built for another architecture than this run's model \(\d+ missing, 0 unexpected keys\): "
        r"missing backbone",
    ):
        load_torchvision_checkpoint(wrong, tmp_path / "raw.pth")


def test_mixed_batch_bicubic_aligned_losses_finite_and_eval_outputs():
    torch.manual_seed(11)
    model = _small_model(
        3,
        roi_align={"aligned": True, "interpolation": "bicubic"},
        # small RoI budgets keep the 256-channel mask head cheap on CPU
        rpn={"post_nms_top_n_train": 200, "post_nms_top_n_test": 100},
        roi_heads={"score_thresh": 0.0, "batch_size_per_image": 64, "detections_per_img": 8},
    )
    g = torch.Generator().manual_seed(12)
    shapes = [(160, 200), (128, 96), (150, 150)]
    images = [torch.rand(3, h, w, generator=g) for h, w in shapes]
    targets = [_target(160, 200, 2, seed=13), _target(128, 96, 0, seed=14), _target(150, 150, 1, seed=15)]
    criterion = build_criterion("ce")

    model.train()
    losses = criterion(model(images, targets)["loss_inputs"])
    assert set(losses) == set(TV_LOSS_NAMES) and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.roi_heads.mask_head[0][0].weight.grad.abs().sum() > 0

    model.eval()
    model.mask_format = "rle"
    with torch.no_grad():
        out = model(images, targets)
    assert set(out) == {"loss_inputs", "detections"}
    assert all(torch.isfinite(v) for v in criterion(out["loss_inputs"]).values())
    for (h, w), det in zip(shapes, out["detections"], strict=True):
        assert len(det["boxes"]) > 0 and len(det["masks"]) == len(det["boxes"])
        assert det["masks"][0]["size"] == [h, w] and isinstance(det["masks"][0]["counts"], str)
        assert (det["boxes"][:, 2] <= w).all() and (det["boxes"][:, 3] <= h).all()
    # the validation-loss pass does not change the detections
    with torch.no_grad():
        plain = model(images)["detections"]
    for det, ref in zip(out["detections"], plain, strict=True):
        assert torch.equal(det["boxes"], ref["boxes"]) and [m["counts"] for m in det["masks"]] == [
            m["counts"] for m in ref["masks"]
        ]


def test_bad_inputs_raise():
    model = _small_model(3)
    images = [torch.rand(3, 64, 64)]
    with pytest.raises(ValueError, match="targets are required"):
        model.train()(images)
    bad = _target(64, 64, 1, seed=16, image_id=42)
    bad["boxes"][0] = torch.tensor([10.0, 10.0, 10.0, 20.0])
    with pytest.raises(ValueError, match="image_id=42"):
        model(images, [bad])
    # checks the RoI heads used to make now happen once, at the entry, naming the image
    float_labels = {**_target(64, 64, 1, seed=16, image_id=42), "labels": torch.tensor([1.0])}
    expected = r"^MaskRCNN: labels of target 0 \(image_id=42\) must be int64"
    with pytest.raises(TypeError, match=expected):
        model(images, [float_labels])
    with pytest.raises(ValueError, match="mask_format"):
        build_mask_rcnn(3, backbone={"name": "resnet18"}, mask_format="png")


def test_resnet101_fpn_matches_torchvision_maskrcnn_with_resnet101_backbone():
    """The R101-FPN model (conf/model/resnet101_fpn) has torchvision's layout: a state dict of
    ``MaskRCNN(resnet_fpn_backbone("resnet101"))`` loads strictly and gives the same detections."""
    from torch import nn
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.models.resnet import Bottleneck

    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(
        backbone_name="resnet101", weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5
    )
    # With random weights, 33 residual blocks blow activations up to ~1e5 and every proposal
    # degenerates. Small last-BN scales keep them near 1, as zero-init-residual training does.
    for module in backbone.modules():
        if isinstance(module, Bottleneck):
            nn.init.uniform_(module.bn3.weight, 0.0, 0.1)
    images = [torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(1))]
    tv = MaskRCNN(
        backbone,
        num_classes=4,
        box_score_thresh=0.0,
        box_detections_per_img=10,
        rpn_post_nms_top_n_test=100,
        min_size=128,
        max_size=160,
    ).eval()
    ours = torchvision_compatible_mask_rcnn(
        4,
        backbone_name="resnet101",
        transform={"min_size": 128, "max_size": 160},
        rpn={"post_nms_top_n_test": 100},
        roi_heads={"score_thresh": 0.0, "detections_per_img": 10},
    ).eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    with torch.no_grad():
        expected, got = tv(images)[0], ours(images)["detections"][0]
    assert len(expected["boxes"]) == 10
    for key in ("boxes", "labels", "scores", "masks"):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-4)
