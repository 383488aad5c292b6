"""The training LOOP against a plain torchvision loop: same weights, batches and RNG -> same weights.

The network's forward/backward parity is covered in test_torchvision_parity.py. This test covers
what Lightning and our module add around it: the optimizer and its parameter list, weight decay,
the warm-up + step schedule and when it is stepped, zero_grad, loss weighting, BatchNorm mode and
running statistics. Six SGD steps of ``MaskRCNNModule`` under ``pl.Trainer`` must give the weights of
the 20-line loop in ``bench.reference_loop`` (torchvision model, torch schedulers).
"""

from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from bench.reference_loop import TrainSettings, build_reference_model, reference_scheduler
from bench.torchvision_compat import torchvision_compatible_mask_rcnn
from maskrcnn.data.coco import CocoInstanceDataset
from maskrcnn.losses import build_criterion
from maskrcnn.losses.criterion import TERMS
from maskrcnn.schedulers import warmup_multistep
from maskrcnn.training.module import MaskRCNNModule

STEPS = 6
SETTINGS = TrainSettings(
    num_classes=3, min_sizes=(64,), max_size=64, lr=0.02, warmup_steps=3, milestones=(0.5, 0.8333), steps=STEPS
)
SMALL = {"rpn": {"post_nms_top_n_train": 200, "batch_size_per_image": 128}, "roi_heads": {"batch_size_per_image": 64}}


def _batches(shapes_dir, n: int) -> list:
    root = shapes_dir / "shapes" / "train"
    ds = CocoInstanceDataset(root, root / "annotations.json")
    items = [ds[i] for i in range(2 * n)]
    return [tuple(map(list, zip(*items[2 * k : 2 * k + 2], strict=True))) for k in range(n)]


def _torchvision_loop(model: nn.Module, batches: list) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=SETTINGS.lr, momentum=SETTINGS.momentum, weight_decay=SETTINGS.weight_decay)
    scheduler = reference_scheduler(optimizer, SETTINGS)
    lrs = []
    model.train()
    for step, (images, targets) in enumerate(batches):
        torch.manual_seed(100 + step)  # the RPN / RoI samplers draw from the global RNG
        lrs.append(optimizer.param_groups[0]["lr"])
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return lrs


class _SeedPerStep(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        torch.manual_seed(100 + batch_idx)
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_lightning_module_steps_equal_plain_torchvision_loop(shapes_dir):
    torch.manual_seed(0)
    reference = build_reference_model(SETTINGS)
    reference.rpn._pre_nms_top_n["training"] = 400
    reference.rpn._post_nms_top_n["training"] = SMALL["rpn"]["post_nms_top_n_train"]
    reference.rpn.fg_bg_sampler.batch_size_per_image = SMALL["rpn"]["batch_size_per_image"]
    reference.roi_heads.fg_bg_sampler.batch_size_per_image = SMALL["roi_heads"]["batch_size_per_image"]
    ours = torchvision_compatible_mask_rcnn(
        SETTINGS.num_classes + 1,
        backbone_norm="bn",
        backbone_name="resnet18",
        transform={"min_size": 64, "max_size": 64, "resize_in_training": True},
        rpn={"pre_nms_top_n_train": 400, **SMALL["rpn"]},
        roi_heads=SMALL["roi_heads"],
    )
    ours.load_state_dict(reference.state_dict(), strict=True)
    start = {k: v.clone() for k, v in reference.state_dict().items()}
    batches = _batches(shapes_dir, STEPS)

    tv_lrs = _torchvision_loop(reference, batches)

    module = MaskRCNNModule(
        net=ours,
        criterion=build_criterion("ce"),
        loss_weights={k: 1.0 for k in TERMS},
        optimizer=partial(torch.optim.SGD, momentum=SETTINGS.momentum, weight_decay=SETTINGS.weight_decay),
        scheduler=partial(
            warmup_multistep,
            warmup_steps=SETTINGS.warmup_steps,
            warmup_factor=SETTINGS.warmup_factor,
            milestones=SETTINGS.milestones,
        ),
        lr=SETTINGS.lr,
    )
    seeder = _SeedPerStep()
    trainer = pl.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        callbacks=[seeder],
    )
    trainer.fit(module, DataLoader(batches, batch_size=None, collate_fn=lambda batch: batch))

    assert trainer.global_step == STEPS
    # Warm-up (3 steps from 0.001x) then x0.1 at steps 3 and 5: the same LR at every step.
    assert seeder.lrs == pytest.approx(tv_lrs, rel=1e-12)
    assert tv_lrs[3] < tv_lrs[2] and tv_lrs[5] < tv_lrs[4]
    ours_state, tv_state = ours.state_dict(), reference.state_dict()
    assert ours_state.keys() == tv_state.keys()
    moved = 0
    for name, value in tv_state.items():
        torch.testing.assert_close(ours_state[name], value, rtol=0, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}")
        moved += int(not torch.equal(value, start[name]))
    # Every parameter and BN statistic (and BN step counter) changed: nothing frozen or skipped.
    assert moved == len(tv_state)
