"""A plain torchvision Mask R-CNN training loop: the yardstick our pipeline is measured against.

Deliberately written the way a user would write it from torchvision's detection tutorial and
references (``references/detection``): a map-style dataset that reads the COCO json, boxes from the
annotation ``bbox``, masks from pycocotools, a random horizontal flip, a shuffling DataLoader,
``torchvision.models.detection.MaskRCNN`` (which resizes inside the model), SGD with linear warm-up
and step decay, and ``sum(loss_dict.values())``. Nothing of ours is used for training, so a gap
between the two pipelines is ours to explain.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset


@dataclass
class TrainSettings:
    """What both pipelines are given; one object so the two can never drift apart.

    ``min_sizes`` are the training shortest-edge choices (one drawn per image), the LAST one is
    the evaluation size (torchvision's convention). ``lr`` is the actual learning rate for
    ``batch_size`` images per step (ours gets ``lr_per_16_images = lr * 16 / batch_size``).
    """

    num_classes: int
    arch: str = "resnet18"
    min_sizes: tuple[int, ...] = (384, 416, 448, 480, 512, 544, 576, 608, 640)
    max_size: int = 1066
    batch_size: int = 2
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    warmup_factor: float = 0.001
    milestones: tuple[float, ...] = (2 / 3, 8 / 9)
    steps: int = 150
    hflip_prob: float = 0.5
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    detections_per_img: int = 100
    extra: dict = field(default_factory=dict)


def _polygons_or_rle_to_mask(segmentation, height: int, width: int) -> np.ndarray:
    """pycocotools' ``annToMask``: uint8 [H, W]."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle)


class ReferenceCocoDataset(Dataset):
    """torchvision-references-style COCO dataset: ``(Tensor[3,H,W] in [0,1], target)``.

    Crowd annotations and boxes without area are dropped, labels are 1..K in category-id order
    (the same mapping our dataset uses, so one evaluator serves both).
    """

    def __init__(self, image_dir: str | Path, annotation_file: str | Path, train: bool, hflip_prob: float = 0.5):
        with open(annotation_file, encoding="utf-8") as f:
            data = json.load(f)
        self.image_dir = Path(image_dir)
        self.images = data["images"]
        self.labels = {c["id"]: i + 1 for i, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
        self.anns: dict[int, list[dict]] = {img["id"]: [] for img in self.images}
        for ann in data["annotations"]:
            if not ann.get("iscrowd", 0) and ann["bbox"][2] > 0 and ann["bbox"][3] > 0:
                self.anns[ann["image_id"]].append(ann)
        self.train, self.hflip_prob = train, hflip_prob

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        info = self.images[index]
        image = Image.open(self.image_dir / info["file_name"]).convert("RGB")
        h, w = info["height"], info["width"]
        anns = self.anns[info["id"]]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        masks = (
            np.stack([_polygons_or_rle_to_mask(a["segmentation"], h, w) for a in anns])
            if anns
            else np.zeros((0, h, w), np.uint8)
        )
        target = {
            "boxes": boxes,
            "labels": torch.tensor([self.labels[a["category_id"]] for a in anns], dtype=torch.int64),
            "masks": torch.from_numpy(masks),
            "image_id": info["id"],
        }
        tensor = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
        if self.train and torch.rand(1).item() < self.hflip_prob:
            tensor = tensor.flip(-1)
            target["boxes"] = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
            target["masks"] = target["masks"].flip(-1)
        return tensor, target


def build_reference_model(settings: TrainSettings) -> nn.Module:
    """``MaskRCNN(resnet_fpn_backbone(arch, norm_layer=BatchNorm2d))`` from scratch, all layers trainable."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    backbone = resnet_fpn_backbone(
        backbone_name=settings.arch, weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5
    )
    anchors = AnchorGenerator(
        tuple((s,) for s in settings.anchor_sizes), ((0.5, 1.0, 2.0),) * len(settings.anchor_sizes)
    )
    return MaskRCNN(
        backbone,
        num_classes=settings.num_classes + 1,
        min_size=tuple(settings.min_sizes),
        max_size=settings.max_size,
        rpn_anchor_generator=anchors,
        box_detections_per_img=settings.detections_per_img,
    )


def reference_scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings):
    """Linear warm-up then x0.1 at the milestone fractions, stepped once per iteration."""
    from torch.optim.lr_scheduler import ChainedScheduler, LinearLR, MultiStepLR

    milestones = [round(m * settings.steps) for m in settings.milestones]
    return ChainedScheduler(
        [
            LinearLR(optimizer, start_factor=settings.warmup_factor, total_iters=settings.warmup_steps),
            MultiStepLR(optimizer, milestones=milestones, gamma=0.1),
        ]
    )


def train_reference(settings: TrainSettings, train_split: dict, seed: int) -> nn.Module:
    """Train the torchvision model for ``settings.steps`` iterations; returns it in eval mode.

    Args:
        train_split: ``{"image_dir", "annotation_file"}``.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = build_reference_model(settings)
    dataset = ReferenceCocoDataset(train_split["image_dir"], train_split["annotation_file"], True, settings.hflip_prob)
    loader = DataLoader(
        dataset,
        batch_size=settings.batch_size,
        shuffle=True,
        collate_fn=lambda b: tuple(zip(*b, strict=True)),
        generator=torch.Generator().manual_seed(seed),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    scheduler = reference_scheduler(optimizer, settings)
    model.train()
    step = 0
    while step < settings.steps:
        for images, targets in loader:
            losses = model(list(images), list(targets))
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"reference loop: non-finite loss at step {step}: {losses}")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if step == settings.steps:
                break
    return model.eval()
