"""Stop training on SIGINT, SIGTERM or SIGUSR1 at a step boundary, save ``last.ckpt`` and say so.

What happens on a signal during ``trainer.fit``:

* SIGTERM (``kill``, ``scancel``, Kubernetes, SLURM at the time limit): Lightning's own handler sets
  ``trainer.received_sigterm``. :class:`StopOnSignal` sees it at the end of the current optimizer
  step (or validation batch) and stops there; Lightning would otherwise stop later and exit 0.
* SIGINT (Ctrl-C) and SIGUSR1: :class:`StopOnSignal`'s handlers record the signal and training
  stops the same way. A second Ctrl-C stops at once (Lightning's KeyboardInterrupt path, no
  checkpoint, exit status 1). Where Lightning's SLURM plugin auto-requeues
  (``SLURMEnvironment(auto_requeue=True)``, any ``sbatch`` job), SIGUSR1 is left to Lightning: it
  saves ``hpc_ckpt_<n>.ckpt`` and requeues the job, and SLURM's SIGTERM then stops the run here.

The stop writes ``checkpoints/last.ckpt`` of that step (mid-epoch included; ``ckpt_path=last``
resumes it exactly) and raises :class:`TrainingInterrupted`, a ``SystemExit`` with status
128 + signal number (130, 143, 138); ``maskrcnn.training.pipeline.train`` prints the one line
that names the signal, the step and the command that resumes.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.utilities.exceptions import SIGTERMException

from maskrcnn.training.checkpoints import last_checkpoint_callback

log = logging.getLogger("maskrcnn")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class TrainingInterrupted(SystemExit):
    """Training stopped by a signal after saving a resumable checkpoint; exit status 128 + signal."""

    def __init__(self, signum: int, step: int, epoch: int, max_epochs: int | None, max_steps: int | None) -> None:
        super().__init__(128 + int(signum))
        self.signum, self.step, self.epoch = int(signum), step, epoch
        self.max_epochs, self.max_steps = max_epochs, max_steps

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    def message(self, resume: str, saved: bool = True) -> str:
        """``stopped by SIGTERM at step 1234 (epoch 5 of 12); resume: <resume>``; without a
        checkpoint (stopped before the first step) the command that starts the run again."""
        steps = f" of {self.max_steps}" if self.max_steps and self.max_steps > 0 else ""
        epochs = f" of {self.max_epochs}" if self.max_epochs and self.max_epochs > 0 else ""
        where = f"step {self.step}{steps} (epoch {self.epoch + 1}{epochs})"
        if not saved:
            again = resume.replace(" ckpt_path=last", "")
            return f"stopped by {self.signal_name} at {where} before the first step, nothing saved; again: {again}"
        return f"stopped by {self.signal_name} at {where}; resume: {resume}"


def interrupted(trainer: pl.Trainer, signum: int) -> TrainingInterrupted:
    max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
    return TrainingInterrupted(signum, trainer.global_step, trainer.current_epoch, trainer.max_epochs, max_steps)


def resume_command(output_dir: str | Path, overrides: list[str] | None = None) -> str:
    """``python src/train.py <overrides> ckpt_path=last hydra.run.dir=<output_dir>``; ``overrides``
    are the command line's (Hydra's task overrides), ``None`` when unknown (shown as ``…``)."""
    kept = (
        ["…"]
        if overrides is None
        else [o for o in overrides if not o.lstrip("+~").startswith(("ckpt_path=", "hydra.run.dir="))]
    )
    args = [*kept, "ckpt_path=last", f"hydra.run.dir={output_dir}"]
    return "python src/train.py " + " ".join(a if a == "…" else shlex.quote(a) for a in args)


def slurm_requeues(trainer: pl.Trainer) -> bool:
    """Whether Lightning's SLURM plugin handles SIGUSR1 (save ``hpc_ckpt_<n>.ckpt`` and requeue)."""
    env = trainer._accelerator_connector.cluster_environment
    return isinstance(env, SLURMEnvironment) and bool(env.auto_requeue)


class StopOnSignal(pl.Callback):
    """Turns SIGINT / SIGTERM / SIGUSR1 into a stop at the next step boundary with a checkpoint.

    Args:
        last_ckpt: where the checkpoint goes when the run has no :class:`LastCheckpoint` callback
            (with one, its file is written through it).
    """

    def __init__(self, last_ckpt: str | Path) -> None:
        self.last_ckpt = Path(last_ckpt)
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}  # signal.signal's previous handlers

    # ------------------------------------------------------------------ handlers
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            self._restore_handlers()
            raise KeyboardInterrupt  # second Ctrl-C: stop at once
        if self.signum is None:
            self.signum = signum
            again = " (Ctrl-C again stops at once, without a checkpoint)" if signum == signal.SIGINT else ""
            log.warning("received %s: stopping after the current step%s", signal.Signals(signum).name, again)

    def _install_handlers(self, trainer: pl.Trainer) -> None:
        ours = [signal.SIGINT] + ([] if slurm_requeues(trainer) else [signal.SIGUSR1])
        for signum in ours:
            try:
                self._previous[signum] = signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread: Lightning's SIGTERM handling still applies
                return

    def _restore_handlers(self) -> None:
        for signum, previous in self._previous.items():
            try:
                signal.signal(signum, previous)
            except (ValueError, TypeError):
                pass
        self._previous = {}

    # ------------------------------------------------------------------ decisions
    def _requested(self, trainer: pl.Trainer) -> int | None:
        signum = self.signum or (signal.SIGTERM if trainer.received_sigterm else None)
        if trainer.world_size > 1:  # every rank stops at the same step (a signal may reach one rank only)
            code = torch.tensor([signum or 0], device=trainer.strategy.root_device)
            codes = trainer.strategy.reduce(code, reduce_op="max")
            signum = int(codes.item()) or None
        return signum

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install_handlers(trainer)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loop = trainer.fit_loop.epoch_loop
        stepped = loop.batch_progress.is_last_batch or (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if stepped and (signum := self._requested(trainer)):
            raise interrupted(trainer, signum)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # Under DDP the ranks may hold one validation batch more or less: no collective here, the
        # stop waits for the next training step.
        if trainer.state.fn != "fit" or trainer.sanity_checking or trainer.world_size > 1:
            return
        if signum := self._requested(trainer):
            raise interrupted(trainer, signum)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()
        if isinstance(exception, (TrainingInterrupted, SIGTERMException)) and not trainer.sanity_checking:
            self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handlers()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore_handlers()

    def save(self, trainer: pl.Trainer) -> None:
        """Write the current state to last.ckpt (through the run's LastCheckpoint when it has one)."""
        last = last_checkpoint_callback(trainer)
        if last is not None:
            last.save_newest(trainer)
            return
        partial = self.last_ckpt.with_name(self.last_ckpt.name + ".partial")
        trainer.save_checkpoint(partial)
        if trainer.is_global_zero:
            os.replace(partial, self.last_ckpt)
