"""A callback for EMA tests: its own moving average of the weights, computed apart from Lightning's.

Added to a run from the command line (the run's PYTHONPATH must hold ``tests``):

    +callbacks.ema_recorder._target_=helpers.ema_recorder.EMARecorder +callbacks.ema_recorder.decay=0.5
    +callbacks.ema_recorder.start=2 +callbacks.ema_recorder.snapshot_steps=[6]
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging
from torch import Tensor


def float_state(module: torch.nn.Module) -> dict[str, Tensor]:
    """The floating-point entries of ``module.state_dict()``, detached, in float64."""
    return {k: v.detach().double().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


def fingerprint(state: dict[str, Tensor]) -> float:
    """One number that tells weight sets apart: the sum of every floating-point entry, in float64."""
    return float(sum(v.double().sum() for k, v in state.items() if v.is_floating_point()))


class EMARecorder(pl.Callback):
    """After every optimizer step: ``ema = decay * ema + (1 - decay) * weights`` in float64 over the
    module's floating-point state (the first update, at zero-based step ``start``, copies it).

    Keeps the latest ``ema`` and ``raw`` weights, float32 ``snapshots[step] = (ema, raw)`` for
    ``snapshot_steps``, the fingerprint of the weights each validation ran with
    (``validated_with[(stage, step)]``, stage ``"fit"`` or ``"validate"``), and, at the start of
    the run's first training batch, ``first_batch = (global step, fingerprint of the model's weights,
    fingerprint of the EMA callback's average)``: what a resumed run restored.
    """

    def __init__(self, decay: float, start: int = 0, snapshot_steps: Sequence[int] = ()) -> None:
        self.decay, self.start, self.snapshot_steps = decay, start, set(snapshot_steps)
        self.ema: dict[str, Tensor] | None = None
        self.raw: dict[str, Tensor] = {}
        self.snapshots: dict[int, tuple[dict[str, Tensor], dict[str, Tensor]]] = {}
        self.validated_with: dict[tuple[str, int], float] = {}
        self.first_batch: tuple[int, float, float] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_batch is None:
            ema = next(c for c in trainer.callbacks if isinstance(c, WeightAveraging))
            average = fingerprint(float_state(ema._average_model.module))
            self.first_batch = (trainer.global_step, fingerprint(float_state(pl_module)), average)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        self.raw = float_state(pl_module)
        if step - 1 >= self.start:
            d = self.decay
            self.ema = (
                dict(self.raw) if self.ema is None else {k: d * self.ema[k] + (1 - d) * v for k, v in self.raw.items()}
            )
        if step in self.snapshot_steps and self.ema is not None:
            as_float = lambda state: {k: v.float() for k, v in state.items()}  # noqa: E731
            self.snapshots[step] = (as_float(self.ema), as_float(self.raw))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking and batch_idx == 0:
            stage = str(trainer.state.fn.value if hasattr(trainer.state.fn, "value") else trainer.state.fn)
            self.validated_with[(stage, trainer.global_step)] = fingerprint(float_state(pl_module))
