"""What reaches the model in training, ours against the torchvision loop, without training anything.

    PYTHONPATH=scripts python -m bench.training_inputs --dataset nuclei [--min-size 384 --max-size 640]

Prints two reports (docs/training_parity.md quotes them):

- ``batch_composition``: over ``steps`` steps of batch 2, with the per-epoch ``set_epoch`` the
  Trainer makes, how many distinct image pairs each sampler setting forms, how often the most
  common pair and the portrait pair recur, and how often each image is seen.
- ``target_differences``: for every training image without flip, our dataset item (albumentations
  resize, boxes from the resized masks) against the loop's (pycocotools masks and json boxes
  resized by torchvision's ``GeneralizedRCNNTransform``): resized size, instance count, mean
  absolute box difference (px), mean mask IoU per instance, mean absolute pixel difference; and
  the same with a forced flip.
- ``mask_round_trip``: every training instance's mask cut to the mask head's 28 x 28 target and
  pasted back over its box, with the aligned geometry (``model.roi_align.aligned=true``) and with
  torchvision's legacy one: IoU with the original mask and pasted / original area, by object size.
  It is the best mask either geometry lets the network give.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from bench import datasets
from bench.reference_loop import ReferenceCocoDataset, TrainSettings, build_reference_model
from maskrcnn.data.coco import CocoInstanceDataset
from maskrcnn.data.sampler import GroupedBatchSampler, aspect_ratio_group_ids
from maskrcnn.data.transforms import build_transforms


def sampled_batches(
    aspect_ratios: list[float], grouping: bool, seed: int, steps: int, batch_size: int = 2, set_epoch: bool = True
) -> list[tuple[int, ...]]:
    """The first ``steps`` batches (sorted index tuples) of our training sampler, epochs as the Trainer runs them."""
    from lightning_fabric.utilities.data import _set_sampler_epoch

    indices = list(range(len(aspect_ratios)))
    sampler = DistributedSampler(indices, num_replicas=1, rank=0, shuffle=True, seed=seed)
    groups = aspect_ratio_group_ids(aspect_ratios) if grouping else [0] * len(indices)
    loader = DataLoader(indices, batch_sampler=GroupedBatchSampler(sampler, groups, batch_size))
    out: list[tuple[int, ...]] = []
    epoch = 0
    while len(out) < steps:
        if set_epoch:
            _set_sampler_epoch(loader, epoch)  # what Lightning's fit loop calls at each epoch start
        out += [tuple(sorted(b)) for b in loader.batch_sampler][: steps - len(out)]
        epoch += 1
    return out


def batch_composition(annotation_file: str | Path, steps: int = 150, seeds: tuple[int, ...] = (0, 1)) -> list[str]:
    """Report lines: distinct pairs, recurring pairs, views per image, grouped vs ungrouped."""
    with open(annotation_file, encoding="utf-8") as f:
        images = json.load(f)["images"]
    ratios = [img["width"] / img["height"] for img in images]
    portrait = tuple(i for i, r in enumerate(ratios) if r < 1)
    per_epoch = -(-len(ratios) // 2)
    lines = [f"{len(ratios)} images, portrait indices {portrait}, {steps} steps of batch 2"]
    for grouping in (True, False):
        for seed in seeds:
            b = sampled_batches(ratios, grouping, seed, steps)
            pairs, seen = collections.Counter(b), collections.Counter(i for x in b for i in x)
            epochs = {tuple(b[i : i + per_epoch]) for i in range(0, len(b), per_epoch)}
            mixed = sum(1 for x in b if set(x) & set(portrait) and not set(x) <= set(portrait))
            lines.append(
                f"grouping={grouping} data seed {seed}: {len(pairs)} distinct pairs; most common x"
                f"{pairs.most_common(1)[0][1]}; portrait pair x{pairs[portrait] if len(portrait) == 2 else '-'}; "
                f"batches mixing a portrait with a landscape image {mixed}; views per image "
                f"{min(seen.values())}-{max(seen.values())}; distinct epoch orders {len(epochs)}"
            )
    fixed = sampled_batches(ratios, True, 0, steps, set_epoch=False)
    lines.append(
        f"without set_epoch: distinct epoch orders "
        f"{len({tuple(fixed[i : i + per_epoch]) for i in range(0, len(fixed), per_epoch)})}"
    )
    return lines


def target_differences(split: dict, min_size: int, max_size: int, flip: bool = False) -> list[str]:
    """Report lines: our training targets against the loop's for every image (see the module docstring)."""
    torch.set_num_threads(1)
    image_dir, ann = split["image_dir"], split["annotation_file"]
    augmentation = build_transforms("default", True, min_size=min_size, max_size=max_size, hflip_prob=float(flip))
    ours = CocoInstanceDataset(image_dir, ann, transforms=augmentation)
    ref = ReferenceCocoDataset(image_dir, ann, train=flip, hflip_prob=1.0)
    transform = build_reference_model(TrainSettings(num_classes=1, min_sizes=(min_size,), max_size=max_size)).transform
    transform.train()
    mean, std = torch.tensor(transform.image_mean)[:, None, None], torch.tensor(transform.image_std)[:, None, None]
    lines, box, iou, pix, counts = [], [], [], [], [0, 0]
    for i in range(len(ref)):
        image_r, target_r = ref[i]
        batch, targets = transform([image_r], [dict(target_r)])
        t_r, (h, w) = targets[0], batch.image_sizes[0]
        image_o, t_o = ours[i]
        counts[0] += len(t_o["boxes"])
        counts[1] += len(t_r["boxes"])
        line = (
            f"image {i} ({ref.images[i]['width']}x{ref.images[i]['height']}): ours {tuple(image_o.shape[1:])}, "
            f"loop {(h, w)}, instances {len(t_o['boxes'])} / {len(t_r['boxes'])}"
        )
        if tuple(image_o.shape[1:]) == (h, w) and len(t_o["boxes"]) == len(t_r["boxes"]):
            box.append((t_o["boxes"] - t_r["boxes"]).abs().mean().item())
            mo, mr = t_o["masks"].bool(), t_r["masks"].bool()
            iou.append(((mo & mr).flatten(1).sum(1) / (mo | mr).flatten(1).sum(1).clamp(min=1)).mean().item())
            pix.append((image_o - (batch.tensors[0, :, :h, :w] * std + mean)).abs().mean().item())
            line += f", |box diff| {box[-1]:.3f} px, mask IoU {iou[-1]:.4f}, |pixel diff| {pix[-1]:.4f}"
        lines.append(line)
    lines.append(
        f"{'flipped: ' if flip else ''}instances ours {counts[0]}, loop {counts[1]}; over {len(box)} same-size "
        f"images: mean |box diff| {np.mean(box):.3f} px, mean mask IoU {np.mean(iou):.4f}, "
        f"mean |pixel diff| {np.mean(pix):.4f}"
    )
    return lines


def mask_round_trip(split: dict, min_size: int, max_size: int, size: int = 28) -> list[str]:
    """Report lines: the mask-target / paste round trip of both geometries (see the module docstring)."""
    from maskrcnn.modeling.postprocess import paste_masks
    from maskrcnn.modeling.roi_heads import project_masks_on_boxes

    torch.set_num_threads(1)
    augmentation = build_transforms("default", True, min_size=min_size, max_size=max_size, hflip_prob=0.0)
    dataset = CocoInstanceDataset(split["image_dir"], split["annotation_file"], transforms=augmentation)
    sides, rows = [], {True: [], False: []}
    for i in range(len(dataset)):
        _, target = dataset[(i, 0)]
        masks, boxes = target["masks"].bool(), target["boxes"]
        if len(masks) == 0:
            continue
        sides.append((boxes[:, 2:] - boxes[:, :2]).max(dim=1).values)
        for aligned in (True, False):
            cut = project_masks_on_boxes(target["masks"], boxes, torch.arange(len(boxes)), size, aligned)
            pasted = paste_masks(cut[:, None], boxes, tuple(masks.shape[-2:]), mask_format="binary", aligned=aligned)
            pasted = pasted.reshape(masks.shape).bool()
            area = masks.flatten(1).sum(1).float()
            iou = (pasted & masks).flatten(1).sum(1) / (pasted | masks).flatten(1).sum(1)
            rows[aligned].append(torch.stack([iou, pasted.flatten(1).sum(1) / area], dim=1))
    side = torch.cat(sides)
    lines = [f"mask round trip ({size}x{size} target, pasted back), {len(side)} instances, at the training scale:"]
    for aligned in (True, False):
        r = torch.cat(rows[aligned])
        parts = [f"all: IoU {r[:, 0].mean():.4f}, area x{r[:, 1].mean():.3f}"]
        for lo, hi in ((0, 8), (8, 16), (16, 32), (32, None)):
            sel = (side >= lo) & (side < hi) if hi is not None else side >= lo
            name = f"{lo}-{hi} px" if hi is not None else f">= {lo} px"
            if not sel.any():
                continue
            parts.append(f"{name} ({int(sel.sum())}): IoU {r[sel, 0].mean():.4f}, area x{r[sel, 1].mean():.3f}")
        lines.append(f"  {'aligned' if aligned else 'legacy (torchvision)'}: " + "; ".join(parts))
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=datasets.DATASETS, default="nuclei")
    p.add_argument("--work-dir", default="outputs/compare_training")
    p.add_argument("--min-size", type=int, default=384)
    p.add_argument("--max-size", type=int, default=640)
    p.add_argument("--steps", type=int, default=150)
    a = p.parse_args(argv)
    splits, _ = datasets.prepare(a.dataset, a.work_dir)
    print("\n".join(batch_composition(splits["train"]["annotation_file"], a.steps)))
    print("\n".join(target_differences(splits["train"], a.min_size, a.max_size)))
    print("\n".join(target_differences(splits["train"], a.min_size, a.max_size, flip=True)[-1:]))
    print("\n".join(mask_round_trip(splits["train"], a.min_size, a.max_size)))


if __name__ == "__main__":
    main()
