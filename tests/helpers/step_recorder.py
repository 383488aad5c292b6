"""A callback for training runs under test: records every optimizer step and can signal its own process.

Added to a run from the command line (the run's PYTHONPATH must hold ``tests``):

    +callbacks.recorder._target_=helpers.step_recorder.StepRecorder +callbacks.recorder.path=steps.jsonl
    +callbacks.recorder.signal_at_step=5 +callbacks.recorder.signal_name=SIGTERM
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytorch_lightning as pl


class StepRecorder(pl.Callback):
    """Appends ``{"step", "epoch", "lr", "image_ids"}`` per training batch to ``path`` (jsonl), and
    sends ``signal_name`` to this process at the end of step ``signal_at_step`` (a real signal,
    delivered at a known step), or with ``signal_in_validation`` at the first batch of the
    validation that follows that step."""

    def __init__(
        self,
        path: str,
        signal_at_step: int | None = None,
        signal_name: str = "SIGTERM",
        signal_in_validation: bool = False,
    ) -> None:
        self.path = Path(path)
        self.signal_at_step = signal_at_step
        self.signum = signal.Signals[signal_name]
        self.signal_in_validation = signal_in_validation

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        record = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "lr": lr,
            "image_ids": [int(t["image_id"]) for t in batch[1]],
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.signal_in_validation and trainer.global_step == self.signal_at_step:
            os.kill(os.getpid(), self.signum)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        at_step = trainer.global_step == self.signal_at_step and not trainer.sanity_checking
        if self.signal_in_validation and at_step and batch_idx == 0:
            os.kill(os.getpid(), self.signum)


def read_steps(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
