"""Side-by-side training: the plain torchvision loop against our ``train(cfg)``, same settings.

Both pipelines get one ``TrainSettings`` (model, sizes, batch, LR schedule, steps, seed); both
trained networks are evaluated by the same code on the same images (our ``CocoEvaluator`` on the
final weights, no checkpoint selection), so the AP ratio measures the training pipelines alone.
``variants`` run our pipeline again with extra Hydra overrides, which is how the pieces that differ
(data pipeline, RoIAlign, initialisation, sampler) are swapped one at a time.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from bench.reference_loop import TrainSettings, train_reference
from maskrcnn.data.coco import CocoInstanceDataset
from maskrcnn.evaluation import CocoEvaluator
from maskrcnn.inference.slice_options import SliceOptions
from maskrcnn.inference.slicing import sliced_detections
from maskrcnn.inference.tta import TestTimeAugmentation
from maskrcnn.inference.tta_options import build_tta, check_tta_config

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@dataclass
class RunResult:
    """One training run. ``metrics`` is None when training diverged (``error`` says where)."""

    pipeline: str  # "torchvision loop" or the variant name
    seed: int
    metrics: dict[str, float] | None
    seconds: float
    error: str | None = None
    eval_seconds: float | None = None  # the evaluation's share of ``seconds``


class FinalWeights(pl.Callback):
    """Keeps the module's weights after the last optimizer step (``self.state``): with
    ``callbacks=ema`` the raw weights, which the EMA callback replaces by the average at the end."""

    def __init__(self) -> None:
        self.state: dict[str, Tensor] | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            self.state = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}


def our_overrides(settings: TrainSettings, train_split: dict, val_split: dict, seed: int) -> list[str]:
    """Hydra overrides that make ``src/train.py`` train exactly what ``TrainSettings`` describes."""
    sizes = list(settings.min_sizes)
    anchors = [[s] for s in settings.anchor_sizes]
    return [
        "data=folder",
        f"data.root={Path(train_split['image_dir']).parent}",
        f"data.train.image_dir={train_split['image_dir']}",
        f"data.train.annotation_file={train_split['annotation_file']}",
        f"data.val.image_dir={val_split['image_dir']}",
        f"data.val.annotation_file={val_split['annotation_file']}",
        f"data.num_classes={settings.num_classes}",
        f"data.batch_size={settings.batch_size}",
        "data.num_workers=0",
        f"model=resnet{settings.arch.removeprefix('resnet')}_fpn"
        if settings.arch.startswith("resnet")
        else f"model={settings.arch}_fpn",
        "model.backbone.pretrained=false",
        "model.backbone.norm=bn",
        "model.backbone.trainable_layers=5",
        f"model.transform.min_size={sizes[-1]}",
        f"model.transform.max_size={settings.max_size}",
        f"model.rpn.anchor_sizes={anchors}",
        f"model.roi_heads.detections_per_img={settings.detections_per_img}",
        "augmentation=multiscale",
        f"augmentation.multiscale_sizes={sizes}",
        f"augmentation.max_size={settings.max_size}",
        f"+augmentation.hflip_prob={settings.hflip_prob}",
        "optimizer=sgd",
        f"optimizer.lr_per_16_images={settings.lr * 16 / settings.batch_size}",
        f"optimizer.fn.momentum={settings.momentum}",
        f"optimizer.fn.weight_decay={settings.weight_decay}",
        "scheduler=multistep",
        f"scheduler.warmup_steps={settings.warmup_steps}",
        f"scheduler.warmup_factor={settings.warmup_factor}",
        f"scheduler.milestones={list(settings.milestones)}",
        f"trainer.max_steps={settings.steps}",
        "trainer.max_epochs=-1",
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_model_summary=false",
        "+trainer.enable_progress_bar=false",
        "validate_after_train=false",
        "callbacks=none",
        "logger=none",
        "log_val_images=0",
        f"seed={seed}",
    ]


def train_ours(
    settings: TrainSettings,
    train_split: dict,
    val_split: dict,
    seed: int,
    extra_overrides: list[str] = (),
    workdir: str | Path | None = None,
) -> tuple[nn.Module, dict[str, Tensor] | None]:
    """Run our ``train(cfg)`` with the matched overrides (+ ``extra_overrides``); returns the net in
    eval mode (with ``callbacks=ema``: the averaged weights) and its weights after the last optimizer
    step (kept by ``FinalWeights``; the raw weights of an EMA run, None if the run stopped early)."""
    from hydra import compose, initialize_config_dir

    from maskrcnn.training.pipeline import train

    base = our_overrides(settings, train_split, val_split, seed)
    # A variant that picks another option of a group drops the base's keys of that group.
    regrouped = {o.split("=", 1)[0] for o in extra_overrides if "." not in o.split("=", 1)[0]}
    base = [o for o in base if o.lstrip("+").split("=", 1)[0].split(".", 1)[0] not in regrouped]
    with tempfile.TemporaryDirectory(dir=workdir) as out:
        overrides = [f"paths.output_dir={out}", *base, *extra_overrides]
        overrides.append("+callbacks.final_weights._target_=bench.training.FinalWeights")
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            cfg = compose(config_name="train", overrides=[*_experiment_off(), *overrides])
        _, objects = train(cfg)
    kept = [c.state for c in objects["trainer"].callbacks if isinstance(c, FinalWeights)]
    return objects["module"].net.eval(), kept[0] if kept else None


def _experiment_off() -> list[str]:
    """Drop a default experiment if the train config still has one (its settings are not ours to compare)."""
    from omegaconf import OmegaConf

    defaults = OmegaConf.load(CONF_DIR / "train.yaml").get("defaults", [])
    has_experiment = any(isinstance(d, dict) and d.get("experiment") for d in defaults)
    return ["~experiment"] if has_experiment else []


@torch.no_grad()
def evaluate_net(
    net: nn.Module,
    val_split: dict,
    max_dets: int,
    returns_dict: bool,
    slicing: SliceOptions | None = None,
    detector: TestTimeAugmentation | None = None,
) -> dict[str, float]:
    """COCO box/mask metrics of ``net`` on the validation split, images at file size, one at a time.

    ``returns_dict``: our MaskRCNN returns ``{"detections": [...]}``, torchvision's a list.
    ``slicing``: evaluate by sliced inference (``maskrcnn.inference.slicing``; our MaskRCNN only).
    ``detector``: run this instead of ``net`` (a ``TestTimeAugmentation`` of it).
    """
    dataset = CocoInstanceDataset(val_split["image_dir"], val_split["annotation_file"], for_evaluation=True)
    evaluator = CocoEvaluator(dataset.annotation_file, dataset.label_to_category_id, max_dets=max_dets)
    net.eval()
    for i in range(len(dataset)):
        image, target = dataset[i]
        if slicing is not None:
            detections = [sliced_detections(net, image, slicing).as_detection()]  # type: ignore[arg-type]
        elif detector is not None:
            detections = detector([image], mask_format="rle")
        else:
            out = net([image], mask_format="rle") if returns_dict else net([image])  # ours: RLE, as validation
            detections = out["detections"] if returns_dict else out
        evaluator.update(detections, [target["image_id"]])
    return evaluator.compute()


def _timed_eval(name: str, seed: int, net: nn.Module, val_split: dict, max_dets: int, **kwargs) -> RunResult:
    """One evaluation of ``net`` as a row of its own (its time is the evaluation's alone)."""
    start = time.perf_counter()
    metrics = evaluate_net(net, val_split, max_dets, True, **kwargs)
    seconds = time.perf_counter() - start
    return RunResult(name, seed, metrics, seconds, eval_seconds=seconds)


def compare(
    settings: TrainSettings,
    train_split: dict,
    val_split: dict,
    seeds: list[int],
    variants: dict[str, list[str]],
    reference: bool = True,
    log=print,
    eval_slice: SliceOptions | None = None,
    eval_tta: list[str] = (),
) -> list[RunResult]:
    """Train the reference loop (optional) and every variant of ours for every seed; evaluate all.

    Extra rows from the same weights of each network of ours, each timed by its evaluation alone
    (its ``eval_seconds``; the plain row's evaluation is timed too, for the ratio):
    ``eval_slice``: "<variant> + sliced eval <tile>", sliced inference;
    ``eval_tta``: "<variant> + tta <name>" for each option of the ``tta`` config group;
    a variant whose final network differs from its weights after the last step (``callbacks=ema``:
    the average): "<variant> raw weights", those weights, and their sliced / TTA rows too.
    """
    results: list[RunResult] = []
    runs = [("torchvision loop", None)] if reference else []
    runs += list(variants.items())
    max_dets = settings.detections_per_img
    for seed in seeds:
        for name, overrides in runs:
            start = time.perf_counter()
            try:
                raw = None
                if overrides is None:
                    net, returns_dict = train_reference(settings, train_split, seed), False
                else:
                    (net, raw), returns_dict = train_ours(settings, train_split, val_split, seed, overrides), True
            except FloatingPointError as exc:  # a diverged run is a result, not a crash of the comparison
                results.append(RunResult(name, seed, None, time.perf_counter() - start, str(exc).split(". ")[0]))
                log(_row_text(results[-1]))
                continue
            eval_start = time.perf_counter()
            metrics = evaluate_net(net, val_split, max_dets, returns_dict=returns_dict)
            end = time.perf_counter()
            results.append(RunResult(name, seed, metrics, end - start, eval_seconds=end - eval_start))
            log(_row_text(results[-1]))
            if not returns_dict:
                continue
            weights = [(name, None)]
            if raw is not None and any(not torch.equal(v, raw[k]) for k, v in net.state_dict().items()):
                weights.append((f"{name} raw weights", raw))  # an EMA run: the network holds the average
            for label, state in weights:
                if state is not None:  # the raw weights of an EMA run, in the same network
                    net.load_state_dict(state)
                    results.append(_timed_eval(label, seed, net, val_split, max_dets))
                    log(_row_text(results[-1]))
                for row in _extra_rows(label, seed, net, val_split, max_dets, eval_slice, eval_tta):
                    results.append(row)
                    log(_row_text(row))
    return results


def _extra_rows(
    name: str,
    seed: int,
    net: nn.Module,
    val_split: dict,
    max_dets: int,
    eval_slice: SliceOptions | None,
    eval_tta: list[str],
) -> list[RunResult]:
    """The sliced and TTA evaluations of ``net`` as it is, one row each."""
    extra: list[tuple[str, dict]] = []
    if eval_slice is not None:
        extra.append((f"{name} + sliced eval {eval_slice.tile_size}", {"slicing": eval_slice}))
    for option in eval_tta:
        tta = build_tta(check_tta_config(OmegaConf.load(CONF_DIR / "tta" / f"{option}.yaml")), net)
        if tta is not None:  # None: the option is the plain view
            extra.append((f"{name} + tta {option}", {"detector": tta}))
    return [_timed_eval(label, seed, net, val_split, max_dets, **kwargs) for label, kwargs in extra]


def _row_text(r: RunResult) -> str:
    if r.metrics is None:
        return f"{r.pipeline:<40} seed {r.seed:<3} DIVERGED: {r.error}  {r.seconds:6.0f} s"
    m = r.metrics
    return (
        f"{r.pipeline:<40} seed {r.seed:<3} box AP {m['bbox_AP']:.3f} (AP50 {m['bbox_AP50']:.3f})  "
        f"mask AP {m['segm_AP']:.3f} (AP50 {m['segm_AP50']:.3f})  {r.seconds:6.0f} s"
    )
