"""Tests for src/maskrcnn/losses: golden values from hand formulas, torchvision equality,
focal(gamma=0) == CE/BCE, empty inputs, bf16/fp16 autocast, criterion keys, Hydra configs."""

import math
from pathlib import Path

import hydra.utils
import pytest
import torch
import torch.nn.functional as F
import torchvision
from omegaconf import OmegaConf
from torchvision.models.detection.roi_heads import fastrcnn_loss, maskrcnn_loss, project_masks_on_boxes

from maskrcnn.losses import (
    TERMS,
    BCEMaskLoss,
    BCEObjectnessLoss,
    CrossEntropyClassifierLoss,
    FocalClassifierLoss,
    FocalMaskLoss,
    FocalObjectnessLoss,
    GIoUBoxLoss,
    MaskRCNNCriterion,
    SmoothL1BoxLoss,
    build_criterion,
    sigmoid_focal_loss,
    softmax_focal_loss,
)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "loss"
T = torch.tensor
ALL_MODULES = [  # (module, branch it reads)
    pytest.param(m, b, id=f"{type(m).__name__}-{b}")
    for m, b in [
        (BCEObjectnessLoss(), "rpn"),
        (FocalObjectnessLoss(), "rpn"),
        (SmoothL1BoxLoss(), "rpn"),
        (GIoUBoxLoss(), "rpn"),
        (CrossEntropyClassifierLoss(), "roi"),
        (FocalClassifierLoss(), "roi"),
        (SmoothL1BoxLoss(), "roi"),
        (FocalClassifierLoss(alpha=0.25, normalizer="num_foreground"), "roi"),
        (GIoUBoxLoss(), "roi"),
        (BCEMaskLoss(), "mask"),
        (FocalMaskLoss(), "mask"),
    ]
]


def random_boxes(n: int, g: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * 50
    return torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g) * 30], dim=1)


def make_inputs(seed=0, S=16, P=5, R=12, Q=4, K=3, M=7, dtype=torch.float32):
    """Random LossInputs following docs/design.md."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: (torch.randn(*s, generator=g) * 2).to(dtype)  # noqa: E731
    rpn_labels = (torch.arange(S) < P).float()
    roi_labels = torch.randint(0, K + 1, (R,), generator=g)
    roi_labels[:Q] = torch.randint(1, K + 1, (Q,), generator=g)
    return {
        "rpn": {
            "objectness": rnd(S),
            "labels": rpn_labels,
            "box_deltas": rnd(P, 4),
            "box_targets": rnd(P, 4),
            "pred_boxes": random_boxes(P, g).to(dtype),
            "gt_boxes": random_boxes(P, g),
        },
        "roi": {
            "class_logits": rnd(R, K + 1),
            "labels": roi_labels,
            "box_deltas": rnd(Q, 4),
            "box_targets": rnd(Q, 4),
            "pred_boxes": random_boxes(Q, g).to(dtype),
            "gt_boxes": random_boxes(Q, g),
        },
        "mask": {"logits": rnd(Q, M, M), "targets": torch.rand(Q, M, M, generator=g).round()},
    }


def close(a, b, tol=1e-6):
    f64 = lambda v: torch.as_tensor(v, dtype=torch.float64)  # noqa: E731
    torch.testing.assert_close(f64(a), f64(b), rtol=tol, atol=tol)


# ---------------------------------------------------------------- focal primitives
def hand_sigmoid_focal(x, t, alpha, gamma):
    p = 1 / (1 + math.exp(-x))
    pt = p if t == 1 else 1 - p
    at = 1.0 if alpha is None else (alpha if t == 1 else 1 - alpha)
    return -at * (1 - pt) ** gamma * math.log(pt)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (None, 1.5), (0.5, 0.0)])
def test_sigmoid_focal_golden(alpha, gamma):
    xs, ts = [0.0, 2.0, -1.0, 3.5], [1.0, 0.0, 1.0, 1.0]
    out = sigmoid_focal_loss(T(xs), T(ts), alpha, gamma, reduction="none")
    close(out, [hand_sigmoid_focal(x, t, alpha, gamma) for x, t in zip(xs, ts, strict=True)])
    close(sigmoid_focal_loss(T(xs), T(ts), alpha, gamma, "sum"), out.sum())
    close(sigmoid_focal_loss(T(xs), T(ts), alpha, gamma, "mean"), out.mean())


def test_softmax_focal_golden():
    logits, labels = T([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]]), T([0, 2])
    logp = [1.0 - math.log(math.e + math.e**2 + 1), 3.0 - math.log(math.e**0.5 + math.e**-1 + math.e**3)]
    fl = [-((1 - math.exp(lp)) ** 2) * lp for lp in logp]
    close(softmax_focal_loss(logits, labels, gamma=2.0), fl)
    # float alpha: background (label 0) weighted 1 - alpha, foreground alpha
    close(softmax_focal_loss(logits, labels, 2.0, alpha=0.25), [0.75 * fl[0], 0.25 * fl[1]])
    close(softmax_focal_loss(logits, labels, 2.0, alpha=T([0.1, 0.2, 0.3]), reduction="sum"), 0.1 * fl[0] + 0.3 * fl[1])


def test_focal_gamma0_equals_ce_and_bce():
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(500, generator=g) * 5, torch.rand(500, generator=g)  # soft targets too
    for red in ("none", "mean", "sum"):
        assert torch.equal(
            sigmoid_focal_loss(x, t, None, 0.0, red), F.binary_cross_entropy_with_logits(x, t, reduction=red)
        )  # bit-exact
    logits, labels = torch.randn(300, 5, generator=g) * 4, torch.randint(0, 5, (300,), generator=g)
    for red in ("none", "mean", "sum"):
        ref = F.cross_entropy(logits, labels, reduction=red)
        assert torch.equal(softmax_focal_loss(logits, labels, 0.0, None, red), ref)
    roi = {"class_logits": logits, "labels": labels}
    assert torch.equal(FocalClassifierLoss(gamma=0.0)(roi), CrossEntropyClassifierLoss()(roi))
    mask = {"logits": x.reshape(5, 10, 10), "targets": t.reshape(5, 10, 10)}
    assert torch.equal(FocalMaskLoss(alpha=None, gamma=0.0)(mask), BCEMaskLoss()(mask))


def test_sigmoid_focal_matches_torchvision():
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(200, generator=g) * 3, (torch.rand(200, generator=g) > 0.7).float()
    ref = torchvision.ops.sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0, reduction="sum")
    close(sigmoid_focal_loss(x, t, 0.25, 2.0, "sum"), ref, 1e-5)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_extreme_logits_finite(gamma):
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = T([-200.0, -30.0, 30.0, 200.0]).to(dtype).requires_grad_()
        out = sigmoid_focal_loss(x, T([1.0, 0.0, 1.0, 0.0]), 0.25, gamma, "sum")
        out.backward()
        assert out.dtype == torch.float32 and torch.isfinite(out) and torch.isfinite(x.grad).all()
        logits = T([[200.0, -200.0], [0.0, 100.0]]).to(dtype).requires_grad_()
        out = softmax_focal_loss(logits, T([0, 1]), gamma, 0.25, "mean")
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------- per-term golden values
def test_objectness_golden():
    rpn = {"objectness": torch.zeros(6), "labels": T([1.0, 0, 0, 1, 0, 0])}
    close(BCEObjectnessLoss()(rpn), math.log(2))
    # focal at p = 0.5: each anchor 0.25 * log 2 * alpha_t; sum / #positives (2)
    expected = (2 * 0.25 + 4 * 0.75) * 0.25 * math.log(2) / 2
    close(FocalObjectnessLoss(alpha=0.25, gamma=2.0)(rpn), expected)
    close(FocalObjectnessLoss(alpha=None, gamma=0.0)(rpn), 6 * math.log(2) / 2)


def test_classifier_golden():
    roi = {"class_logits": T([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), "labels": T([0, 1, 1])}
    ce = [math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1)), math.log(2)]
    close(CrossEntropyClassifierLoss()(roi), sum(ce) / 3)
    fl = [(1 - math.exp(-c)) ** 2 * c for c in ce]
    close(FocalClassifierLoss(gamma=2.0)(roi), sum(fl) / 3)
    close(FocalClassifierLoss(gamma=2.0, normalizer="num_foreground")(roi), sum(fl) / 2)
    hydra_alpha = OmegaConf.create({"a": [0.1, 0.9]}).a  # a ListConfig, as Hydra passes it
    close(FocalClassifierLoss(gamma=2.0, alpha=hydra_alpha)(roi), (0.1 * fl[0] + 0.9 * (fl[1] + fl[2])) / 3)
    smooth = CrossEntropyClassifierLoss(label_smoothing=0.1)(roi)
    close(smooth, F.cross_entropy(roi["class_logits"], roi["labels"], label_smoothing=0.1))


def test_smooth_l1_golden_and_normaliser():
    deltas = T([[0.0, 0.0, 0.0, 0.0], [1.0, 0.05, -0.5, 0.0]])
    b = 1 / 9
    per = [0, 0, 0, 0, 1 - b / 2, 0.5 * 0.05**2 / b, 0.5 - b / 2, 0]
    rpn = {"box_deltas": deltas, "box_targets": torch.zeros(2, 4), "objectness": torch.zeros(8)}
    close(SmoothL1BoxLoss()(rpn), sum(per) / 8)  # RPN: / S
    roi = {"box_deltas": deltas, "box_targets": torch.zeros(2, 4), "class_logits": torch.zeros(5, 3)}
    close(SmoothL1BoxLoss()(roi), sum(per) / 5)  # RoI: / R
    close(SmoothL1BoxLoss(beta=0.0)(roi), 1.55 / 5)  # plain L1


def test_giou_golden():
    pred = T([[0.0, 0, 2, 2], [0.0, 0, 1, 1], [5.0, 5, 9, 8]])
    gt = T([[1.0, 1, 3, 3], [2.0, 0, 3, 1], [5.0, 5, 9, 8]])
    # overlap: iou 1/7, enclosing 9, union 7 | disjoint: iou 0, enclosing 3, union 2 | identical: 0
    expected = (1 - (1 / 7 - 2 / 9)) + (1 + 1 / 3) + 0.0
    roi = {"pred_boxes": pred, "gt_boxes": gt, "class_logits": torch.zeros(4, 2)}
    close(GIoUBoxLoss()(roi), expected / 4, 1e-6)
    close(GIoUBoxLoss()({"pred_boxes": pred, "gt_boxes": gt, "objectness": torch.zeros(10)}), expected / 10, 1e-6)


def test_mask_golden():
    mask = {"logits": torch.zeros(2, 3, 3), "targets": torch.ones(2, 3, 3)}
    close(BCEMaskLoss()(mask), math.log(2))
    close(FocalMaskLoss(alpha=0.25, gamma=2.0)(mask), 0.25 * 0.25 * math.log(2))


# ---------------------------------------------------------------- torchvision equality
def test_rpn_losses_match_torchvision():
    from torchvision.models.detection.rpn import RegionProposalNetwork

    rpn = RegionProposalNetwork(
        None,
        None,
        0.7,
        0.3,
        batch_size_per_image=10**6,
        positive_fraction=0.5,
        pre_nms_top_n={},
        post_nms_top_n={},
        nms_thresh=0.7,
    )
    g = torch.Generator().manual_seed(4)
    labels = [torch.randint(-1, 2, (60,), generator=g).float() for _ in range(2)]  # -1 = ignored
    targets = [torch.randn(60, 4, generator=g) for _ in range(2)]
    objectness, deltas = torch.randn(120, 1, generator=g), torch.randn(120, 4, generator=g)
    ref_obj, ref_box = rpn.compute_loss(objectness, deltas, labels, targets)  # samples everything
    lab, tgt = torch.cat(labels), torch.cat(targets)
    keep, pos = lab >= 0, lab == 1
    ours = {
        "objectness": objectness.flatten()[keep],
        "labels": lab[keep],
        "box_deltas": deltas[pos],
        "box_targets": tgt[pos],
    }
    close(BCEObjectnessLoss()(ours), ref_obj)
    close(SmoothL1BoxLoss()(ours), ref_box)


def test_roi_losses_match_torchvision():
    g = torch.Generator().manual_seed(5)
    R, K = 40, 4
    labels = [torch.randint(0, K + 1, (20,), generator=g) for _ in range(2)]
    targets = [torch.randn(20, 4, generator=g) for _ in range(2)]
    logits, box_reg = torch.randn(R, K + 1, generator=g), torch.randn(R, 4 * (K + 1), generator=g)
    ref_cls, ref_box = fastrcnn_loss(logits, box_reg, labels, targets)
    lab, tgt = torch.cat(labels), torch.cat(targets)
    pos = torch.where(lab > 0)[0]
    roi = {
        "class_logits": logits,
        "labels": lab,
        "box_deltas": box_reg.reshape(R, -1, 4)[pos, lab[pos]],
        "box_targets": tgt[pos],
    }
    close(CrossEntropyClassifierLoss()(roi), ref_cls)
    close(SmoothL1BoxLoss()(roi), ref_box)


def test_mask_loss_matches_torchvision():
    g = torch.Generator().manual_seed(6)
    K, M, H = 3, 14, 40
    gt_masks = [(torch.rand(3, H, H, generator=g) > 0.5).to(torch.uint8) for _ in range(2)]
    gt_labels = [torch.randint(1, K + 1, (3,), generator=g) for _ in range(2)]
    proposals = [random_boxes(5, g).clamp(max=H - 1) for _ in range(2)]
    matched = [torch.randint(0, 3, (5,), generator=g) for _ in range(2)]
    mask_logits = torch.randn(10, K + 1, M, M, generator=g)
    ref = maskrcnn_loss(mask_logits, proposals, gt_masks, gt_labels, matched)
    labels = torch.cat([gl[i] for gl, i in zip(gt_labels, matched, strict=True)])
    targets = torch.cat(
        [project_masks_on_boxes(m, p, i, M) for m, p, i in zip(gt_masks, proposals, matched, strict=True)]
    )
    close(BCEMaskLoss()({"logits": mask_logits[torch.arange(10), labels], "targets": targets}), ref)


# ---------------------------------------------------------------- empty, autocast, errors
@pytest.mark.parametrize("module,branch", ALL_MODULES)
def test_empty_positives_give_zero_with_grad(module, branch):
    inputs = make_inputs(7, S=0, P=0, R=0, Q=0)
    [v.requires_grad_() for v in inputs[branch].values() if v.is_floating_point()]
    out = module(inputs[branch])
    assert out.dim() == 0 and out.dtype == torch.float32 and out.item() == 0.0 and out.requires_grad
    out.backward()  # the graph exists, so the training step does not break
    # no positives but sampled negatives: finite, and box / mask terms exactly 0
    neg_only = module(make_inputs(8, P=0, Q=0)[branch])
    assert torch.isfinite(neg_only)
    if isinstance(module, (SmoothL1BoxLoss, GIoUBoxLoss, BCEMaskLoss, FocalMaskLoss)):
        assert neg_only.item() == 0.0


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("module,branch", ALL_MODULES)
def test_autocast_half_inputs_float32_output(module, branch, half, device):
    fp32 = make_inputs(9)[branch]
    low = {k: v.to(device) for k, v in make_inputs(9, dtype=half)[branch].items()}
    with torch.autocast(device, dtype=half):
        out = module(low)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    upcast = {k: (v.float() if v.is_floating_point() else v) for k, v in low.items()}
    close(out.cpu(), module(upcast).cpu(), 1e-6)  # computed in float32 from the rounded inputs
    close(out.cpu(), module(fp32), 3e-2)  # and close to the full-precision value


_ROI = make_inputs(10)["roi"]
BAD_INPUTS = [  # (call, exception, message pattern)
    (
        lambda: SmoothL1BoxLoss()({"box_deltas": _ROI["box_deltas"], "box_targets": _ROI["box_targets"]}),
        KeyError,
        r"SmoothL1BoxLoss: .*objectness.*class_logits",
    ),
    (
        lambda: SmoothL1BoxLoss()({**_ROI, "class_logits": _ROI["class_logits"][:2]}),
        ValueError,
        "positive boxes but only 2 sampled",
    ),
    (
        lambda: BCEMaskLoss()({"logits": torch.zeros(1, 2, 2)}),
        KeyError,
        r"BCEMaskLoss\['mask'\]: missing key\(s\) \['targets'\]",
    ),
    (
        lambda: BCEObjectnessLoss()({"objectness": torch.zeros(4), "labels": torch.zeros(5)}),
        ValueError,
        r"BCEObjectnessLoss\['rpn'\]: .*'labels' has shape",
    ),
    (
        lambda: CrossEntropyClassifierLoss()({"class_logits": torch.zeros(2, 3), "labels": torch.zeros(2)}),
        TypeError,
        r"CrossEntropyClassifierLoss\['roi'\]: labels must be int64",
    ),
    (lambda: sigmoid_focal_loss(torch.zeros(3), torch.zeros(4)), ValueError, "sigmoid_focal_loss: .*shape"),
    (lambda: softmax_focal_loss(torch.zeros(2, 3), T([0, 3])), ValueError, r"labels must lie in \[0, 3\)"),
    (lambda: sigmoid_focal_loss(torch.zeros(3), torch.zeros(3), reduction="avg"), ValueError, "reduction"),
    (lambda: softmax_focal_loss(torch.zeros(2, 3), T([0, 1]), gamma=-1.0), ValueError, "gamma"),
    (lambda: softmax_focal_loss(torch.zeros(2, 3), T([0, 1]), alpha=T([0.5, 0.5])), ValueError, "alpha tensor"),
]


@pytest.mark.parametrize("call,exc,match", BAD_INPUTS)
def test_bad_inputs_raise_named_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------- criterion and configs
def test_criterion_routes_branches_and_errors():
    inputs = make_inputs(12)
    losses = build_criterion("ce", mask=FocalMaskLoss())(inputs)
    rpn, roi = inputs["rpn"], inputs["roi"]
    expected = [
        BCEObjectnessLoss()(rpn),
        SmoothL1BoxLoss()(rpn),
        CrossEntropyClassifierLoss()(roi),
        SmoothL1BoxLoss()(roi),
        FocalMaskLoss()(inputs["mask"]),
    ]
    assert all(torch.equal(losses[t], e) for t, e in zip(TERMS, expected, strict=True))
    with pytest.raises(TypeError, match="unknown slot"):
        build_criterion("ce", boxes=GIoUBoxLoss())
    with pytest.raises(ValueError, match="kind"):
        build_criterion("dice")
    with pytest.raises(KeyError, match=r"MaskRCNNCriterion: LossInputs is missing branch\(es\) \['mask'\]"):
        build_criterion()({"rpn": inputs["rpn"], "roi": inputs["roi"]})
    with pytest.raises(ValueError, match="MaskRCNNCriterion: the 'mask' loss .* scalar tensor for loss_mask"):
        build_criterion("ce", mask=torch.nn.Identity())(inputs)  # returns the dict itself


@pytest.mark.parametrize("path", sorted(CONF_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_loss_yaml_instantiates(path):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR.parent), version_base=None):
        cfg = compose(overrides=[f"+loss={path.stem}"]).loss  # resolves the yaml's defaults (deltas on ce)
    criterion = hydra.utils.instantiate(cfg.criterion)
    assert isinstance(criterion, MaskRCNNCriterion) and set(cfg.weights) == set(TERMS)
    inputs = make_inputs(13)
    ours = criterion(inputs)
    assert tuple(ours) == TERMS == ("loss_objectness", "loss_rpn_box", "loss_classifier", "loss_box", "loss_mask")
    assert all(v.dim() == 0 and v.dtype == torch.float32 and torch.isfinite(v) for v in ours.values())
    if path.stem in ("ce", "focal", "giou"):  # the yaml and the Python preset agree
        preset = build_criterion(path.stem)(inputs)
        assert all(torch.equal(ours[t], preset[t]) for t in TERMS)


def test_documented_overrides_compose():
    from hydra import compose, initialize_config_dir

    box, mask = "maskrcnn.losses.box_regression.GIoUBoxLoss", "maskrcnn.losses.mask.FocalMaskLoss"
    overrides = [
        "+loss=focal",
        f"loss.criterion.box._target_={box}",
        f"loss.criterion.mask._target_={mask}",
        "+loss.criterion.mask.alpha=0.25",
        "+loss.criterion.mask.gamma=2.0",
        "loss.criterion.classifier.alpha=[0.25,0.75,0.75,0.75]",
    ]
    with initialize_config_dir(str(CONF_DIR.parent), version_base=None):
        criterion = hydra.utils.instantiate(compose(config_name=None, overrides=overrides).loss.criterion)
    assert isinstance(criterion.box, GIoUBoxLoss) and isinstance(criterion.mask, FocalMaskLoss)
    assert criterion.classifier.alpha_per_class.tolist() == [0.25, 0.75, 0.75, 0.75]
    assert all(torch.isfinite(v) for v in criterion(make_inputs(15)).values())
    assert {p.stem for p in CONF_DIR.glob("*.yaml")} >= {"ce", "focal", "giou"}
