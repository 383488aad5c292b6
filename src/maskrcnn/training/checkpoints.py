"""The run's two checkpoint files and the names ``ckpt_path`` accepts for them.

``checkpoints/last.ckpt`` (:class:`LastCheckpoint`) always holds the newest training state: it is
rewritten after every validation, at the end of every training epoch, every
``every_n_train_steps`` optimizer steps when set, at the end of training and when a signal stops
the run (``maskrcnn.training.interrupts``), whether or not the monitored metric improved.
``checkpoints/best.ckpt`` (the ``model_checkpoint`` callback, a plain ``ModelCheckpoint``) holds the
state with the best monitored metric. ``ckpt_path=last`` and ``ckpt_path=best`` name them.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any
from weakref import proxy

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from maskrcnn.errors import ConfigError

# ckpt_path values that name a file of the run directory's checkpoints/ folder.


class AtomicModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose files are complete or absent: each is written under a temporary
    name and renamed, so a process killed while saving leaves the previous file intact."""

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        partial = f"{filepath}.partial"
        trainer.save_checkpoint(partial, self.save_weights_only)
        if trainer.is_global_zero:
            os.replace(partial, filepath)
        trainer.strategy.barrier("checkpoint_renamed")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


class LastCheckpoint(AtomicModelCheckpoint):
    """Writes ``<dirpath>/last.ckpt`` with the newest state, overwriting it each time.

    Saves after every validation and every training epoch end (whichever comes first at a given
    step), every ``every_n_train_steps`` optimizer steps (``None``: only those), and at the end of
    training; never twice for one step.

    Args:
        dirpath: the folder (``<run dir>/checkpoints``).
        every_n_train_steps: also save mid-epoch every this many optimizer steps (a crash or
            SIGKILL then loses at most that many steps).
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int | None = None) -> None:
        if every_n_train_steps is not None and (isinstance(every_n_train_steps, bool) or int(every_n_train_steps) < 1):
            raise ConfigError(
                "callbacks.last_checkpoint.every_n_train_steps must be a positive integer or null, "
                f"got {every_n_train_steps!r}"
            )
        super().__init__(
            dirpath=dirpath,
            filename="last",
            monitor=None,
            save_top_k=1,
            save_last=False,
            every_n_train_steps=every_n_train_steps,
            enable_version_counter=False,
        )

    @property
    def state_key(self) -> str:
        return "LastCheckpoint"  # one per run; independent of every_n_train_steps so that it may change on resume

    def save_newest(self, trainer: pl.Trainer) -> None:
        """Write last.ckpt for the current step unless it was already written for it."""
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save_newest(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save_newest(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save_newest(trainer)


class RandomStateResume(pl.Callback):
    """Stores the global random states (torch, numpy, Python) in every checkpoint (``rng_states``)
    and restores them right before the first training batch of a run resumed from it, so that the
    model's random sampling (RPN / RoI samplers) continues as if never interrupted. Lightning itself
    neither stores nor restores them.

    A checkpoint written after the last training batch of an epoch (at the epoch's validation, by
    a signal during it, or at its end) is restored at the start of the next epoch instead: the
    uninterrupted run's next training loader draws its seed from these states after that point.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self._at_epoch_start = False

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint["rng_states"] = collect_rng_states()
        checkpoint["rng_states_at_epoch_end"] = bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._pending = checkpoint.get("rng_states")
        self._at_epoch_start = bool(checkpoint.get("rng_states_at_epoch_end", False))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None and self._at_epoch_start:
            states, self._pending = self._pending, None
            set_rng_states(states)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is not None:
            states, self._pending = self._pending, None
            set_rng_states(states)


def collect_rng_states() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python global random states, in types ``torch.load(weights_only=True)`` reads."""
    state = np.random.get_state(legacy=True)  # (name, keys uint32[624], pos, has_gauss, cached)
    assert isinstance(state, tuple)  # legacy=True never gives the dict form
    name, keys, pos, has_gauss, cached = state
    return {
        "torch": torch.get_rng_state(),
        "torch.cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`collect_rng_states` returned (CUDA states only when this process has as many GPUs)."""
    torch.set_rng_state(states["torch"])
    cuda = states.get("torch.cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def last_checkpoint_callback(trainer: pl.Trainer) -> LastCheckpoint | None:
    return next((c for c in getattr(trainer, "callbacks", []) if isinstance(c, LastCheckpoint)), None)
