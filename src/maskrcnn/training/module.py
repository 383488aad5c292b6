"""The LightningModule: network + criterion + optimisation + COCO evaluation.

The network predicts, the criterion returns unweighted loss terms, and this module weights,
sums and logs them (``train/loss_mask`` ...). Validation computes the same loss terms and COCO
box/mask AP from one forward pass per batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging
from pytorch_lightning.utilities.types import OptimizerLRScheduler
from torch import Tensor, nn

from maskrcnn.errors import NonFiniteLossError
from maskrcnn.evaluation import CocoEvaluator
from maskrcnn.evaluation.coco_evaluator import Backend
from maskrcnn.inference.slice_options import SliceOptions
from maskrcnn.inference.slicing import sliced_detections
from maskrcnn.inference.tta import TestTimeAugmentation
from maskrcnn.losses.criterion import TERMS
from maskrcnn.modeling.mask_rcnn import MaskRCNN
from maskrcnn.training.nonfinite import SkipLimit

log = logging.getLogger(__name__)

Batch = tuple[list[Tensor], list[dict]]


class MaskRCNNModule(pl.LightningModule):
    """Trains and evaluates a :class:`maskrcnn.modeling.mask_rcnn.MaskRCNN`.

    Args:
        net: the network; ``net(images, targets)`` returns ``{"loss_inputs", "detections"}``.
        criterion: maps loss inputs to the dict of unweighted terms (``losses.criterion.TERMS``).
        loss_weights: one weight per term, e.g. ``{"loss_mask": 1.0, ...}``.
        optimizer: ``optimizer(params, lr=...)`` (a Hydra ``_partial_``).
        scheduler: ``scheduler(optimizer, total_steps=...)`` or None; stepped every optimizer step.
        lr: base learning rate after the linear scaling rule (computed by the pipeline).
        nonfinite_loss: "raise" stops with the step and the offending term; "skip" skips the step.
        nonfinite_max_skip_fraction / nonfinite_skip_window / nonfinite_min_skipped: with "skip",
            stop (NonFiniteLossError) once more than this share of the last ``window`` steps, and at
            least ``min_skipped`` of them, were skipped (see ``training.nonfinite.SkipLimit``).
        eval_backend: "faster_coco_eval" or "pycocotools".
        slicing: validate by sliced inference (``inference.slice``, ``maskrcnn.inference.slicing``):
            detections only, no validation losses (the network never sees the image whole).

    ``tta`` (set by ``evaluate`` for ``tta=...``, else None): ``tta(images)`` gives the detections
    validation scores (``maskrcnn.inference.tta.TestTimeAugmentation``); the loss terms are then
    not computed, since they belong to the network's own single view.
    """

    def __init__(
        self,
        net: nn.Module,
        criterion: nn.Module,
        loss_weights: Mapping[str, float],
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        lr: float = 0.02,
        nonfinite_loss: str = "raise",
        eval_backend: Backend = "faster_coco_eval",
        nonfinite_max_skip_fraction: float = 0.2,
        nonfinite_skip_window: int = 100,
        nonfinite_min_skipped: int = 5,
        slicing: SliceOptions | None = None,
    ) -> None:
        super().__init__()
        unknown = set(loss_weights) - set(TERMS)
        missing = set(TERMS) - set(loss_weights)
        if unknown or missing:
            raise ValueError(
                f"loss.weights must name exactly {list(TERMS)}; unknown: {sorted(unknown)}, missing: {sorted(missing)}"
            )
        if nonfinite_loss not in ("raise", "skip"):
            raise ValueError(f"nonfinite_loss must be 'raise' or 'skip', got {nonfinite_loss!r}")
        self.net = net
        self.criterion = criterion
        self.loss_weights = {k: float(v) for k, v in loss_weights.items()}
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.lr = lr
        self.nonfinite_loss = nonfinite_loss
        self.eval_backend = eval_backend
        self.slicing = slicing
        self.evaluator: CocoEvaluator | None = None
        self.skipped_steps = 0
        self.skip_limit = (
            SkipLimit(nonfinite_max_skip_fraction, nonfinite_skip_window, nonfinite_min_skipped)
            if nonfinite_loss == "skip"
            else None
        )
        # Filled by the pipeline and stored in checkpoints so predict/eval can rebuild the model.
        self.run_config: dict | None = None
        self.class_names: list[str] | None = None
        self.label_to_category_id: dict[int, int] | None = None
        self.last_val_metrics: dict[str, float] = {}
        self.tta: TestTimeAugmentation | None = None
        self._batch_start = 0.0

    def forward(self, images: list[Tensor]) -> list[dict]:
        """Detections for a list of ``Tensor[3, H, W]`` float images in [0, 1]."""
        return self.net(images)["detections"]

    # ------------------------------------------------------------------ training
    def _weighted(self, terms: dict[str, Tensor]) -> Tensor:
        return cast(Tensor, sum(self.loss_weights[k] * v for k, v in terms.items()))  # terms: never empty

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        self._batch_start = time.perf_counter()

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        images, targets = batch
        if not images:  # every image of the batch was unreadable and skipped (data.bad_images=skip)
            log.warning("Skipping training batch %d: all its images were unreadable", batch_idx)
            self._is_nonfinite(None)  # keeps the skip-limit collective in step on every rank
            return self._skipped_step()
        terms = self.criterion(self.net(images, targets)["loss_inputs"])
        loss = self._weighted(terms)
        if self._is_nonfinite(loss):
            return self._nonfinite(terms, batch_idx)
        n = len(images)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=n)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=n)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=n)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        elapsed = time.perf_counter() - self._batch_start
        if elapsed > 0 and batch[0]:
            # Global throughput: every rank processes its own batch in the same wall time.
            images = len(batch[0]) * self.trainer.world_size
            self.log("train/images_per_sec", images / elapsed, batch_size=len(batch[0]))

    def _is_nonfinite(self, loss: Tensor | None) -> bool:
        """Whether this rank's loss is NaN/inf (None: no loss, an all-unreadable batch); with
        nonfinite_loss=skip also counts the step for the skip limit. Under DDP a step counts as
        skipped when any rank skipped it (one all-reduce of a scalar per step), so that every
        rank sees the same counts and the limit stops all ranks at the same step."""
        bad = loss is not None and not bool(torch.isfinite(loss))
        if self.skip_limit is None:
            return bad
        skipped = bad
        if self.trainer.world_size > 1:
            flag = torch.tensor(float(bad), device=self.device)
            skipped = bool(self.trainer.strategy.reduce(flag, reduce_op="sum") > 0)
        self.skip_limit.record(skipped, where=f"global step {self.global_step}")
        return bad

    def on_train_end(self) -> None:
        if self.skip_limit is not None and self.trainer.is_global_zero:
            log.info(self.skip_limit.summary())

    def _nonfinite(self, terms: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        # Weighted, so that a NaN/inf weight in the config is caught and named too.
        weighted = {k: (self.loss_weights[k] * v).detach() for k, v in terms.items()}
        bad = {k: float(v) for k, v in weighted.items() if not torch.isfinite(v)}
        where = f"global step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})"
        if self.nonfinite_loss == "raise":
            raise NonFiniteLossError(
                f"Non-finite loss at {where}: {bad}. Lower optimizer.lr_per_16_images, set "
                "trainer.gradient_clip_val, check the data (bad boxes) or use nonfinite_loss=skip."
            )
        self.skipped_steps += 1
        log.warning(
            "Skipping the step at %s: non-finite loss terms %s (%d skipped so far)", where, bad, self.skipped_steps
        )
        return self._skipped_step()

    def _skipped_step(self) -> Tensor | None:
        """What training_step returns to skip an update: None on one process. Under DDP every rank
        must run backward, so this rank contributes a zero gradient (a surrogate loss) and the
        step goes on with the other ranks' gradients."""
        if self.trainer.world_size == 1:
            return None
        return cast(Tensor, sum(p.sum() for p in self.net.parameters() if p.requires_grad) * 0.0)

    # ---------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        if self.evaluator is None:
            dm: Any = getattr(self.trainer, "datamodule", None)  # set by Lightning, not declared on Trainer
            roi_heads: Any = self.net.roi_heads
            self.evaluator = CocoEvaluator(
                dm.val_annotation_file,
                dm.label_to_category_id,
                max_dets=roi_heads.detections_per_img,
                backend=self.eval_backend,
            )
        self.evaluator.reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> dict | None:
        images, targets = batch
        if not images:  # all unreadable and skipped: nothing to evaluate
            return None
        assert self.evaluator is not None  # made in on_validation_epoch_start
        ids = [int(t["image_id"]) for t in targets]
        if self.tta is not None:
            detections: list[Any] = self.tta(images, mask_format="rle")  # as the network's, below
            self.evaluator.update(detections, ids)
            return {"detections": detections}
        if self.slicing is not None:
            net = cast(MaskRCNN, self.net)
            detections = [sliced_detections(net, image, self.slicing).as_detection() for image in images]
            self.evaluator.update(cast(list[dict], detections), ids)
            return {"detections": detections}
        # The evaluator and the image loggers read RLE (here and with tta): pasting one mask at a time
        # keeps validation of large photos in memory (full-image float masks are D x H x W x 4 bytes).
        out = self.net(images, targets, mask_format="rle")
        terms = self.criterion(out["loss_inputs"])
        n = len(images)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, sync_dist=True, batch_size=n)
        self.log("val/loss", self._weighted(terms), sync_dist=True, batch_size=n)
        self.evaluator.update(out["detections"], ids)
        return {"detections": out["detections"]}

    def on_validation_epoch_end(self) -> None:
        # Every rank gathers all results (each image once) and computes the same numbers.
        assert self.evaluator is not None  # made in on_validation_epoch_start
        self.evaluator.gather()
        metrics = self.evaluator.compute()
        self.last_val_metrics = metrics
        self.log_dict({f"val/{k}": float(v) for k, v in metrics.items()}, sync_dist=True)

    # -------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> OptimizerLRScheduler:
        if self.optimizer_factory is None:
            raise ValueError("No optimizer configured (cfg.optimizer)")
        params = [p for p in self.net.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params, lr=self.lr)
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["run_config"] = self.run_config
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and self.class_names is None:
            self.class_names = list(dm.class_names)
            self.label_to_category_id = {int(k): int(v) for k, v in dm.label_to_category_id.items()}
        checkpoint["class_names"] = self.class_names
        checkpoint["label_to_category_id"] = self.label_to_category_id

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # A checkpoint of a run with callbacks=ema holds the averaged weights as its state_dict and
        # the raw ones as current_model_state (maskrcnn.training.ema). Resumed without the EMA
        # callback, training goes on from the raw weights, as it would have with it.
        raw = checkpoint.get("current_model_state")
        trainer = self._trainer
        if raw is None or trainer is None or trainer.state.fn != "fit":
            return
        if not any(isinstance(c, WeightAveraging) for c in getattr(trainer, "callbacks", [])):
            log.warning("Resuming an EMA checkpoint without callbacks=ema: training continues from its raw weights")
            checkpoint["state_dict"] = raw
