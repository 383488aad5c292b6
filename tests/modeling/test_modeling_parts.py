"""transform, backbone, anchors, RPN, box coding, matching, sampling == torchvision (random weights)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import resnet18
from torchvision.models.detection import _utils as tv_utils
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork as TVRPN
from torchvision.models.detection.rpn import RPNHead as TVRPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from maskrcnn.modeling.anchors import AnchorGenerator
from maskrcnn.modeling.backbone import build_backbone, freeze_trunk_layers
from maskrcnn.modeling.box_coder import BoxCoder
from maskrcnn.modeling.matcher import BalancedSampler, Matcher, ignore_crowd_matches
from maskrcnn.modeling.rpn import RegionProposalNetwork
from maskrcnn.modeling.transform import ImageBatch, ImageTransform, map_boxes_to_original

SIZES = ((32,), (64,), (128,), (256,), (512,))
RATIOS = ((0.5, 1.0, 2.0),) * 5
STRIDES = {"0": 4, "1": 8, "2": 16, "3": 32, "pool": 64}
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def random_boxes(n: int, size: float = 100.0, generator=None) -> torch.Tensor:
    """Tensor[n, 4] xyxy boxes with positive width/height inside [0, size + size/2]."""
    xy = torch.rand(n, 2, generator=generator) * size
    wh = torch.rand(n, 2, generator=generator) * size / 2 + 1
    return torch.cat([xy, xy + wh], dim=1)


# ---------------------------------------------------------------- box coder
@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coder_matches_torchvision(weights):
    g = torch.Generator().manual_seed(0)
    gt, anchors = random_boxes(200, generator=g), random_boxes(200, generator=g)
    ours, theirs = BoxCoder(weights), tv_utils.BoxCoder(weights)
    assert torch.equal(ours.encode(gt, anchors), theirs.encode_single(gt, anchors))
    deltas = torch.randn(200, 4 * 3, generator=g) * 3  # large dw/dh exercise the clip
    decoded = ours.decode(deltas, anchors)
    assert decoded.shape == (200, 3, 4) and torch.equal(decoded, theirs.decode(deltas, [anchors]))
    assert torch.allclose(ours.decode(ours.encode(gt, anchors), anchors)[:, 0], gt, atol=1e-3)
    assert ours.decode(torch.zeros(0, 8), torch.zeros(0, 4)).shape == (0, 2, 4)


# ---------------------------------------------------------------- matcher / sampler
@pytest.mark.parametrize("low_quality", [True, False])
def test_matcher_matches_torchvision(low_quality):
    g = torch.Generator().manual_seed(1)
    iou = torch.rand(7, 500, generator=g) * 0.9
    iou[3, 10] = iou[3, 11] = 0.95  # a tie for gt 3
    ours = Matcher(0.7, 0.3, low_quality)(iou.clone())
    theirs = tv_utils.Matcher(0.7, 0.3, low_quality)(iou.clone())
    assert ours.dtype == torch.int64 and torch.equal(ours, theirs) and set(ours.unique().tolist()) >= {-2, -1}
    assert torch.equal(Matcher(0.5, 0.5)(torch.zeros(0, 9)), torch.full((9,), -1))  # no gt: all background


def test_sampler_consumes_rng_like_torchvision():
    g = torch.Generator().manual_seed(2)
    labels = [torch.randint(-1, 3, (300,), generator=g) for _ in range(3)] + [torch.zeros(50, dtype=torch.int64)]
    torch.manual_seed(123)
    pos, neg, after_ours = *BalancedSampler(64, 0.25)(labels), torch.rand(1)
    torch.manual_seed(123)
    tv_pos, tv_neg, after_theirs = *tv_utils.BalancedPositiveNegativeSampler(64, 0.25)(labels), torch.rand(1)
    assert torch.equal(after_ours, after_theirs)  # same amount of RNG consumed
    for p, n, tp, tn in zip(pos, neg, tv_pos, tv_neg, strict=True):
        assert torch.equal(p, torch.where(tp)[0]) and torch.equal(n, torch.where(tn)[0])
    assert pos[0].numel() == 16 and neg[0].numel() == 48 and pos[3].numel() == 0
    (all_pos, *_), (all_neg, *_) = BalancedSampler(None, 0.5)(labels)  # no sampling: everything
    assert torch.equal(all_pos, torch.where(labels[0] >= 1)[0]) and torch.equal(all_neg, torch.where(labels[0] == 0)[0])


def test_ignore_crowd_matches():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60], [1, 1, 10, 10]])
    labels = torch.tensor([0.0, 1.0, 0.0, -1.0])
    out = ignore_crowd_matches(labels, boxes, torch.tensor([[0.0, 0, 10, 11]]))
    assert torch.equal(out, torch.tensor([-1.0, 1.0, 0.0, -1.0])) and labels[0] == 0  # input untouched
    assert ignore_crowd_matches(labels, boxes, torch.zeros(0, 4)) is labels


# ---------------------------------------------------------------- anchors
@pytest.mark.parametrize("image_size", [(128, 160), (96, 64)])
def test_anchors_match_torchvision(image_size):
    h, w = image_size
    feats = [torch.zeros(2, 1, math.ceil(h / s), math.ceil(w / s)) for s in STRIDES.values()]
    theirs = TVAnchorGenerator(SIZES, RATIOS)(ImageList(torch.zeros(2, 3, h, w), [(h, w)] * 2), feats)
    gen = AnchorGenerator(SIZES, RATIOS)
    ours = gen((h, w), feats)
    assert gen.num_anchors_per_location() == 3 and torch.equal(ours, theirs[0]) and torch.equal(ours, theirs[1])
    assert gen((h, w), feats) is ours  # cached


# ---------------------------------------------------------------- transform
def _images_and_targets():
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 50, 70, generator=g), torch.rand(3, 64, 40, generator=g)]
    masks = [(torch.rand(2, *im.shape[-2:], generator=g) > 0.5).to(torch.uint8) for im in images]
    boxes = [random_boxes(2, 30, g) for _ in images]
    labels = torch.tensor([1, 2])
    return images, [
        {"boxes": b, "labels": labels, "masks": m, "crowd_boxes": b[:1]} for b, m in zip(boxes, masks, strict=True)
    ]


def _assert_same_batch(ours, our_targets, theirs, their_targets):
    assert isinstance(ours, ImageBatch) and ours.image_sizes == theirs.image_sizes
    assert torch.equal(ours.tensors, theirs.tensors)
    for a, b in zip(our_targets, their_targets, strict=True):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["masks"], b["masks"])
        assert a["masks"].dtype == torch.uint8 and torch.equal(a["crowd_boxes"], b["boxes"][:1])


@pytest.mark.parametrize("training", [False, True])
def test_transform_matches_torchvision(training):
    images, targets = _images_and_targets()
    ours = ImageTransform(min_size=(40, 60, 80, 100), max_size=130, resize_in_training=True).train(training)
    theirs = GeneralizedRCNNTransform((40, 60, 80, 100), 130, MEAN, STD).train(training)
    for seed in range(3):  # training picks a random min_size per image: same RNG use as torchvision
        torch.manual_seed(seed)
        ours_out = ours(images, targets)
        torch.manual_seed(seed)
        _assert_same_batch(*ours_out, *theirs(images, targets))
    assert ours.state_dict() == {} and targets[0]["masks"].shape[-2:] == (50, 70)  # inputs untouched
    batch, none_targets = ours.eval()(images)
    assert none_targets is None and batch.tensors.shape[-1] % 32 == 0 and batch.tensors.shape[-2] % 32 == 0
    boxes, resized = random_boxes(5), batch.image_sizes[0]
    assert torch.equal(map_boxes_to_original(boxes, resized, (50, 70)), resize_boxes(boxes, list(resized), [50, 70]))


def test_transform_training_without_resize_only_normalizes_and_pads():
    images, targets = _images_and_targets()
    batch, out = ImageTransform(size_divisible=32, resize_in_training=False).train()(images, targets)
    assert batch.image_sizes == [(50, 70), (64, 40)] and batch.tensors.shape == (2, 3, 64, 96)
    expected = (images[0] - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    assert torch.allclose(batch.tensors[0, :, :50, :70], expected)
    assert batch.tensors[0, :, 50:].abs().sum() == 0 and batch.tensors[1, :, :, 40:].abs().sum() == 0
    assert torch.equal(out[0]["boxes"], targets[0]["boxes"])


@pytest.mark.parametrize("bad", [torch.rand(1, 3, 8, 8), torch.rand(4, 8, 8), torch.zeros(3, 8, 8, dtype=torch.uint8)])
def test_transform_rejects_bad_images(bad):
    with pytest.raises(ValueError, match="image 1"):
        ImageTransform().eval()([torch.rand(3, 8, 8), bad])


# ---------------------------------------------------------------- backbone
def test_backbone_keys_and_outputs_match_torchvision():
    torch.manual_seed(0)
    tv_backbone = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).backbone.eval()
    tv_keys = list(tv_backbone.state_dict())
    assert list(build_backbone("resnet50", norm="bn").state_dict()) == tv_keys
    frozen = build_backbone("resnet50").eval()  # frozen_bn: no num_batches_tracked
    assert list(frozen.state_dict()) == [k for k in tv_keys if not k.endswith("num_batches_tracked")]
    with torch.no_grad():  # make BN statistics and affine parameters non-trivial
        for name, t in tv_backbone.state_dict().items():
            if t.is_floating_point():
                t.add_(torch.rand_like(t) * 0.05 if "running_var" in name else torch.randn_like(t) * 0.01)
    plain_bn = build_backbone("resnet50", norm="bn").eval()
    plain_bn.load_state_dict(tv_backbone.state_dict()), frozen.load_state_dict(tv_backbone.state_dict())
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        expected, same_ops, frozen_out = tv_backbone(x), plain_bn(x), frozen(x)
    assert list(same_ops) == ["0", "1", "2", "3", "pool"] and frozen.out_channels == 256
    for k in expected:
        assert torch.equal(same_ops[k], expected[k])
        # FrozenBatchNorm2d folds the statistics differently: equal up to float rounding
        assert (frozen_out[k] - expected[k]).abs().max() <= 1e-5 * expected[k].abs().max()


@pytest.mark.parametrize(
    "name, norm",
    [(n, m) for n in ("resnet18", "resnet34") for m in ("frozen_bn", "bn", "gn")]
    + [  # the big trunks take seconds to build on CPU
        pytest.param("resnet101", "frozen_bn", marks=pytest.mark.slow),
        pytest.param("resnext101_32x8d", "bn", marks=pytest.mark.slow),
    ],
)
def test_backbones_build_and_run(name, norm):
    model = build_backbone(name, norm=norm, out_channels=64).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert [v.shape[-1] for v in out.values()] == [16, 8, 4, 2, 1] and out["0"].shape[:2] == (1, 64)
    assert all(p.requires_grad for p in model.parameters())  # not pretrained: everything trains


@pytest.mark.parametrize("trainable_layers", [0, 3, 5])
def test_freezing_matches_torchvision(trainable_layers):
    ours, theirs = build_backbone("resnet18", norm="bn"), _resnet_fpn_extractor(resnet18(), trainable_layers)
    freeze_trunk_layers(ours.body, trainable_layers)
    grads = [{k: p.requires_grad for k, p in m.named_parameters()} for m in (ours, theirs)]
    assert grads[0] == grads[1] and (sum(grads[0].values()) < len(grads[0])) == (trainable_layers < 5)


def test_unknown_backbone_raises():
    cases = [({"name": "vgg16"}, "resnet18.*resnext101_32x8d"), ({"name": "resnet18", "norm": "ln"}, "norm")]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            build_backbone(**kwargs)


# ---------------------------------------------------------------- RPN
RPN_KW = dict(fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=64, positive_fraction=0.5, nms_thresh=0.7)


def _rpn_pair(in_channels=16):
    """Our RPN and torchvision's with identical (non-trivial) head weights."""
    torch.manual_seed(5)
    top_n = dict(pre_nms_top_n_train=120, pre_nms_top_n_test=60, post_nms_top_n_train=150, post_nms_top_n_test=80)
    ours = RegionProposalNetwork(in_channels, SIZES, RATIOS, **top_n, **RPN_KW)
    with torch.no_grad():  # weights large enough that deltas move boxes and NMS has work to do
        for p in ours.head.parameters():
            p.normal_(0, 0.3)
    theirs = TVRPN(
        TVAnchorGenerator(SIZES, RATIOS),
        TVRPNHead(in_channels, 3),
        pre_nms_top_n={"training": 120, "testing": 60},
        post_nms_top_n={"training": 150, "testing": 80},
        **RPN_KW,
    )
    theirs.head.load_state_dict(ours.head.state_dict())
    return ours, theirs


def _rpn_inputs():
    """Two 16-channel FPN pyramids of a 128x160 padded batch, image sizes and random gt boxes."""
    g = torch.Generator().manual_seed(6)
    feats = {k: torch.randn(2, 16, 128 // s, 160 // s, generator=g) for k, s in STRIDES.items()}
    tensors, sizes = torch.zeros(2, 3, 128, 160), [(128, 150), (100, 160)]
    targets = [{"boxes": random_boxes(n, 90, g), "labels": torch.ones(n, dtype=torch.int64)} for n in (3, 2)]
    return ImageBatch(tensors, sizes), ImageList(tensors, sizes), feats, targets


def _losses_from_inputs(li):
    objectness = F.binary_cross_entropy_with_logits(li["objectness"], li["labels"])
    box = F.smooth_l1_loss(li["box_deltas"], li["box_targets"], beta=1 / 9, reduction="sum") / li["labels"].numel()
    return objectness, box


def test_rpn_eval_proposals_match_torchvision():
    ours, theirs = _rpn_pair()
    assert list(ours.state_dict()) == list(theirs.state_dict()) and "head.conv.0.0.weight" in ours.state_dict()
    legacy = {k.replace("conv.0.0.", "conv."): v for k, v in theirs.head.state_dict().items()}
    ours.head.load_state_dict(legacy)  # legacy single-conv checkpoints still load
    batch, image_list, feats, targets = _rpn_inputs()
    ours.eval(), theirs.eval()
    with torch.no_grad():
        props, loss_inputs = ours(batch, feats)
        tv_props, _ = theirs(image_list, feats)
    assert loss_inputs is None and all(10 < p.shape[0] <= 80 for p in props)
    assert all(torch.equal(a, b) for a, b in zip(props, tv_props, strict=True))
    with torch.no_grad():  # eval mode with targets: test-time top-n proposals and loss inputs as well
        props2, loss_inputs = ours(batch, feats, targets)
    assert all(torch.equal(a, b) for a, b in zip(props2, tv_props, strict=True)) and loss_inputs is not None


def test_rpn_training_loss_inputs_match_torchvision_losses():
    ours, theirs = _rpn_pair()
    batch, image_list, feats, targets = _rpn_inputs()
    ours.train(), theirs.train()
    for seed in (0, 1):
        torch.manual_seed(seed)
        props, li = ours(batch, feats, targets)
        torch.manual_seed(seed)
        tv_props, tv_losses = theirs(image_list, feats, targets)
        assert all(torch.equal(a, b) for a, b in zip(props, tv_props, strict=True))
        objectness, box = _losses_from_inputs(li)
        assert torch.allclose(objectness, tv_losses["loss_objectness"], rtol=1e-6, atol=0)
        assert torch.allclose(box, tv_losses["loss_rpn_box_reg"], rtol=1e-6, atol=0)
        assert li["objectness"].numel() == 128 and li["labels"].sum() == li["box_deltas"].shape[0] > 0
        anchors = _anchors_from_targets(li["gt_boxes"], li["box_targets"])
        decoded = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode(li["box_deltas"], anchors)[:, 0]
        assert torch.allclose(decoded, li["pred_boxes"], atol=1e-3)
        box.backward()  # the loss inputs are differentiable w.r.t. the head
        assert ours.head.bbox_pred.weight.grad.abs().sum() > 0
        ours.zero_grad()


def _anchors_from_targets(gt: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Invert the (1,1,1,1) box encoding: the anchors [P, 4] xyxy the targets were computed on."""
    gt_wh = gt[:, 2:] - gt[:, :2]
    anchor_wh = gt_wh / targets[:, 2:].exp()
    center = gt[:, :2] + 0.5 * gt_wh - targets[:, :2] * anchor_wh
    return torch.cat([center - anchor_wh / 2, center + anchor_wh / 2], dim=1)


def test_rpn_without_gt_and_with_crowd():
    ours, _ = _rpn_pair()
    batch, _, feats, targets = _rpn_inputs()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)} for _ in range(2)]
    _, li = ours.train()(batch, feats, empty)
    objectness, box = _losses_from_inputs(li)
    assert torch.isfinite(objectness) and torch.isfinite(box) and box == 0
    assert li["box_deltas"].shape == (0, 4) and li["labels"].sum() == 0 and li["objectness"].numel() == 128
    # anchors with IoU >= 0.5 with the crowd region stop being negatives; positives stay
    crowd = [dict(t, crowd_boxes=torch.tensor([[0.0, 0.0, 160.0, 128.0]])) for t in targets]
    no_sampling = RegionProposalNetwork(16, SIZES, RATIOS, batch_size_per_image=None)
    no_sampling.head.load_state_dict(ours.head.state_dict())
    _, with_crowd = no_sampling(batch, feats, crowd)
    _, without = no_sampling(batch, feats, targets)
    assert with_crowd["labels"].sum() == without["labels"].sum() > 0  # same positives, fewer negatives
    assert with_crowd["labels"].numel() < without["labels"].numel()


def test_aligned_mask_targets_cover_a_box_shaped_mask_exactly():
    """A gt mask filling exactly the RoI: the aligned target is centred (symmetric, soft only by
    bilinear interpolation at the edges); torchvision's legacy projection reads half a pixel
    down-right, so it is 1 at the top-left edge and sees background along the bottom-right."""
    from maskrcnn.modeling.roi_heads import project_masks_on_boxes

    masks = torch.zeros(1, 40, 40, dtype=torch.uint8)
    masks[0, 10:18, 5:13] = 1
    box = torch.tensor([[5.0, 10.0, 13.0, 18.0]])
    aligned = project_masks_on_boxes(masks, box, torch.zeros(1, dtype=torch.int64), 28, aligned=True)
    legacy = project_masks_on_boxes(masks, box, torch.zeros(1, dtype=torch.int64), 28, aligned=False)
    torch.testing.assert_close(aligned, aligned.flip(-1))
    torch.testing.assert_close(aligned, aligned.flip(-2))
    assert (aligned >= 0.5).float().mean() > 0.99
    assert (legacy - legacy.flip(-1)).abs().max() > 0.5
    assert legacy[0, 0, 0] == 1.0 and legacy[0, -1].max() < 0.5
