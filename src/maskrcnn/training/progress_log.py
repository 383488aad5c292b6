"""Plain progress lines for logs that are not a terminal (nohup, SLURM, CI).

Rich's progress bar redraws one line in place; redirected to a file it shows nothing until the
end. ``ProgressLog`` writes an ordinary log line every ``every_n_steps`` optimizer steps:

    step 120/450 (epoch 2/6)  loss 1.234  lr 0.02  41.3 img/s  ETA 0:03:12

and, in any mode, one line after each validation:

    validation (epoch 2, step 150): bbox AP 0.123 (AP50 0.301)  segm AP 0.145 (AP50 0.298)
"""

from __future__ import annotations

import datetime
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

log = logging.getLogger("maskrcnn.progress")


class ProgressLog(pl.Callback):
    """Args:
        every_n_steps: optimizer steps between two progress lines.
        when: "auto" (only when stdout is not a terminal), "always" or "never" (validation lines
            are printed in every mode except "never").
    """

    def __init__(self, every_n_steps: int = 20, when: str = "auto") -> None:
        if when not in ("auto", "always", "never"):
            raise ValueError(f"callbacks.progress_log.when must be auto|always|never, got {when!r}")
        if int(every_n_steps) < 1:
            raise ValueError(f"callbacks.progress_log.every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = int(every_n_steps)
        self.when = when
        self._reset_window()
        self._fit_start = 0.0
        self._train_seconds = 0.0

    def _steps_enabled(self) -> bool:
        return self.when == "always" or (self.when == "auto" and not sys.stdout.isatty())

    def _reset_window(self) -> None:
        self._window_start = time.perf_counter()
        self._losses: list[float] = []
        self._images = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_window()  # the validation in between is not training time

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.when == "never" or not trainer.is_global_zero:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._losses.append(float(loss.detach()))
        self._images += len(batch[0]) * trainer.world_size
        step = trainer.global_step
        if not self._steps_enabled() or step == 0 or step % self.every_n_steps or not self._losses:
            return
        if getattr(self, "_last_logged", None) == step:  # accumulation: several batches per step
            return
        self._last_logged = step
        elapsed = time.perf_counter() - self._window_start
        self._train_seconds += elapsed
        total = trainer.estimated_stepping_batches if trainer.max_steps < 0 else trainer.max_steps
        eta = ""
        if total and total != float("inf"):
            per_step = self._train_seconds / step
            eta = f"  ETA {datetime.timedelta(seconds=round(per_step * (total - step)))}"
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        log.info(
            "step %d/%s (epoch %d%s)  loss %.4f  lr %.4g  %.1f img/s%s", step, total if total else "?",
            trainer.current_epoch, epochs, sum(self._losses) / len(self._losses), lr,
            self._images / max(elapsed, 1e-9), eta,
        )
        self._reset_window()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.when == "never" or trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and v.numel() == 1}
        if "val/segm_AP" not in m:
            return
        if trainer.state.fn == "fit":
            what = f"validation (epoch {trainer.current_epoch}, step {trainer.global_step})"
        else:
            # Lightning restores only the weights here: the loop's epoch/step are not the checkpoint's.
            what = f"validation of the checkpoint {Path(trainer.ckpt_path).name}" if trainer.ckpt_path else "validation"
        log.info(
            "%s: bbox AP %.3f (AP50 %.3f)  segm AP %.3f (AP50 %.3f)", what,
            m.get("val/bbox_AP", 0.0), m.get("val/bbox_AP50", 0.0), m["val/segm_AP"], m.get("val/segm_AP50", 0.0),
        )
