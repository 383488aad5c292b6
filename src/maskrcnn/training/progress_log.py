"""Plain progress lines for logs that are not a terminal (nohup, SLURM, CI).

Rich's progress bar redraws one line in place; redirected to a file it shows nothing until the
end (``build_trainer`` leaves it out there). ``ProgressLog`` writes an ordinary log line every
``every_n_steps`` optimizer steps or every ``every_n_seconds`` of training, whichever comes first:

    step 120/450 (epoch 2/6)  loss 1.234  lr 0.02  41.3 img/s  ETA 0:03:12

and, in any mode, one line after each validation:

    validation (epoch 2, step 150): bbox AP 0.123 (AP50 0.301)  segm AP 0.145 (AP50 0.298)

img/s counts the images and the training time since the previous line, across epoch boundaries;
validation and the sanity check are not training time. The ETA is the steps left times the time
per step of this run so far, validation included (amortised per step once one has run).
"""

from __future__ import annotations

import datetime
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

log = logging.getLogger("maskrcnn.progress")


def format_rate(rate: float) -> str:
    """Images per second with three significant digits and no exponent: 41.3, 0.0123, 1234."""
    if rate >= 100:
        return f"{rate:.0f}"
    if rate >= 1:
        return f"{rate:#.3g}"
    return f"{rate:.3f}" if rate >= 0.01 else f"{rate:.2g}"


class ProgressLog(pl.Callback):
    """Args:
    every_n_steps: optimizer steps between two progress lines.
    every_n_seconds: training seconds after which a line is written even before
        ``every_n_steps`` steps (slow steps); 0 turns the time trigger off.
    when: "auto" (only when stdout is not a terminal), "always" or "never" (validation lines
        are printed in every mode except "never").
    clock: seconds (monotonic); tests pass a fake one.
    """

    def __init__(
        self,
        every_n_steps: int = 20,
        when: str = "auto",
        every_n_seconds: float = 60.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if when not in ("auto", "always", "never"):
            raise ValueError(f"callbacks.progress_log.when must be auto|always|never, got {when!r}")
        if int(every_n_steps) < 1:
            raise ValueError(f"callbacks.progress_log.every_n_steps must be >= 1, got {every_n_steps}")
        if not float(every_n_seconds) >= 0:
            raise ValueError(f"callbacks.progress_log.every_n_seconds must be >= 0, got {every_n_seconds}")
        self.every_n_steps, self.every_n_seconds = int(every_n_steps), float(every_n_seconds)
        self.when, self.clock = when, clock
        self._running_since: float | None = None  # training clock running since (None: paused)
        self._window_seconds = 0.0  # training seconds since the last line
        self._train_seconds = 0.0  # training seconds of this run
        self._val_seconds = 0.0
        self._val_started: float | None = None
        self._validations = 0
        self._start_step = 0
        self._last_logged_step = -1
        self._losses: list[float] = []
        self._images = 0

    def _steps_enabled(self) -> bool:
        return self.when == "always" or (self.when == "auto" and not sys.stdout.isatty())

    # ------------------------------------------------------------------ the training clock
    def _pause(self) -> None:
        if self._running_since is not None:
            elapsed = self.clock() - self._running_since
            self._window_seconds += elapsed
            self._train_seconds += elapsed
            self._running_since = None

    def _resume(self) -> None:
        if self._running_since is None:
            self._running_since = self.clock()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_step = self._last_logged_step = trainer.global_step
        self._resume()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()
        self._val_started = self.clock()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()

    # ------------------------------------------------------------------ step lines
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.when == "never" or not trainer.is_global_zero:
            return
        self._resume()  # in case no on_train_start / on_validation_end came first
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._losses.append(float(loss.detach()))
        self._images += len(batch[0]) * trainer.world_size
        step = trainer.global_step
        if not self._steps_enabled() or step == self._last_logged_step or not self._losses:
            return  # same step: gradient accumulation, several batches per step
        running = 0.0 if self._running_since is None else self.clock() - self._running_since
        window = self._window_seconds + running
        by_steps = step % self.every_n_steps == 0
        by_time = 0 < self.every_n_seconds <= window
        if not (by_steps or by_time):
            return
        self._pause()
        self._write(trainer, step)
        self._last_logged_step, self._window_seconds, self._losses, self._images = step, 0.0, [], 0
        self._resume()

    def _write(self, trainer: pl.Trainer, step: int) -> None:
        total = trainer.estimated_stepping_batches if trainer.max_steps < 0 else trainer.max_steps
        eta = ""
        done = step - self._start_step
        if total and total != float("inf") and done > 0:
            # validation amortised over the steps once one has run (it recurs as training goes on)
            per_step = (self._train_seconds + (self._val_seconds if self._validations else 0.0)) / done
            eta = f"  ETA {datetime.timedelta(seconds=round(per_step * max(total - step, 0)))}"
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        rate = self._images / max(self._window_seconds, 1e-9)
        log.info(
            "step %d/%s (epoch %d%s)  loss %.4f  lr %.4g  %s img/s%s",
            step,
            total if total else "?",
            trainer.current_epoch,
            epochs,
            sum(self._losses) / len(self._losses),
            lr,
            format_rate(rate),
            eta,
        )

    # ------------------------------------------------------------------ validation lines
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._val_started is not None and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._val_seconds += self.clock() - self._val_started
            self._validations += 1
            self._resume()  # back to training
        self._val_started = None
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
            "%s: bbox AP %.3f (AP50 %.3f)  segm AP %.3f (AP50 %.3f)",
            what,
            m.get("val/bbox_AP", 0.0),
            m.get("val/bbox_AP50", 0.0),
            m["val/segm_AP"],
            m.get("val/segm_AP50", 0.0),
        )
