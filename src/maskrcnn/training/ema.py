"""Exponential moving average (EMA) of the weights (``callbacks=ema``): Lightning's ``EMAWeightAveraging``.

After every ``update_every_n_steps``-th optimizer step from the zero-based step
``update_starting_at_step`` on, Lightning's callback updates a copy of the LightningModule:
``ema = decay * ema + (1 - decay) * weights`` for every parameter and buffer (BatchNorm statistics
too); its first update copies the weights. Validation during ``fit`` runs with the averaged weights
(swapped in and out), and every checkpoint holds them as its ``state_dict``, which is what eval,
predict and export load; the raw weights go to ``current_model_state`` and the average's own state
to ``averaging_state`` (Lightning's keys), so ``ckpt_path=last`` resumes both exactly.
``checkpoint["ema"]`` says which weights the ``state_dict`` holds (``describe_checkpoint`` prints it).

What :class:`EMAWeights` changes in Lightning's callback, and why:

* Before the first update there is no average yet: validation and checkpoints use the raw weights.
  Lightning's would validate, save and, when the run ends first, keep the weights of step 0.
* A checkpoint written while the averaged weights are swapped in (a signal stops the run during
  validation; ``last.ckpt`` at the end of training) still stores the average as ``state_dict`` and
  the raw weights as ``current_model_state``; Lightning's assumes the raw weights are in the model.
* At the end of training the average is swapped into the model, not copied over the raw weights,
  so that the ``last.ckpt`` written after it still holds the raw weights for a later resume.
* Outside ``fit`` (``trainer.validate`` of ``best.ckpt`` after training) nothing is swapped or
  loaded: such a checkpoint's ``state_dict`` already is the average.
* The average lives on the model's device: Lightning makes it in ``setup``, before the model moves
  to the GPU, and would otherwise keep it in host memory and copy the model there every update.
* With half-precision weights (``trainer.precision=16-true|bf16-true``) the average stays float32:
  Lightning copies the model in ``setup``, before the precision plugin converts it, so every update
  is float32 arithmetic (in half precision ``(1 - decay) x (weights - average)`` would mostly round
  away). A swap puts the average, rounded, into the half-precision model; Lightning's swap back
  would then copy that rounded value over the float32 average, so the float32 values are kept
  aside while swapped, restored on the swap back, and are what a checkpoint written meanwhile holds.

Callback order matters once: this callback is listed before ``StopOnSignal`` (``builders.build_callbacks``
puts the configured callbacks first, Lightning puts checkpoint callbacks last), so a step's update
is done before a signal stop or a checkpoint saves that step.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EMAWeightAveraging
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor


class EMAUpdate:
    """``ema = decay * ema + (1 - decay) * current`` for one tensor: torch's ``get_ema_avg_fn``
    arithmetic (the same floats), as a module-level class that spawned DDP processes can unpickle."""

    def __init__(self, decay: float) -> None:
        self.decay = decay

    @torch.no_grad()
    def __call__(self, ema_param: Tensor, current_param: Tensor, num_averaged: Tensor | int) -> Tensor:
        return self.decay * ema_param + (1 - self.decay) * current_param


class EMAWeights(EMAWeightAveraging):
    """Lightning's ``EMAWeightAveraging`` with this project's checkpoint and validation rules (see the module).

    Args:
        decay: weight of the average in each update, in (0, 1); the average spans ~1 / (1 - decay) updates.
        update_starting_at_step: zero-based optimizer step of the first update.
        update_every_n_steps: update after every this many optimizer steps.
    """

    def __init__(self, decay: float = 0.999, update_starting_at_step: int = 0, update_every_n_steps: int = 1) -> None:
        super().__init__(
            decay=decay,
            update_starting_at_step=update_starting_at_step,
            update_every_n_steps=update_every_n_steps,
            use_buffers=True,
        )
        self.decay = float(decay)
        # Lightning passes torch's get_ema_avg_fn(decay), a local function that cannot be pickled,
        # which trainer=ddp_sim (ddp_spawn) must do with every callback; the same update, picklable:
        self._kwargs["avg_fn"] = EMAUpdate(self.decay)
        self._swapped = False  # the module holds the average, the averaged copy the raw weights
        # while swapped: the average's values the module's dtype cannot hold (name -> float32 tensor)
        self._exact: dict[str, Tensor] = {}

    @property
    def updates(self) -> int:
        """Updates of the average so far (0: no average yet)."""
        return 0 if self._average_model is None else int(self._average_model.n_averaged)

    def describe(self) -> dict[str, Any]:
        """What ``checkpoint["ema"]`` holds: the settings and which weights the ``state_dict`` is."""
        return {
            "decay": self.decay,
            "update_starting_at_step": self.update_starting_at_step,
            "update_every_n_steps": self.update_every_n_steps,
            "updates": self.updates,
            "state_dict": "ema" if self.updates > 0 else "raw",
        }

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._swapped = False
        super().setup(trainer, pl_module, stage)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is not None:
            self._average_model.to(pl_module.device)

    def _named_average(self) -> list[tuple[str, Tensor]]:
        """The average's parameters then buffers, by name: the order Lightning's swap pairs them in."""
        assert self._average_model is not None
        module = self._average_model.module
        return [*module.named_parameters(), *module.named_buffers()]

    def _swap_models(self, pl_module: pl.LightningModule) -> None:
        if not self._swapped:
            current = [*pl_module.parameters(), *pl_module.buffers()]
            named = self._named_average()
            self._exact = {
                name: a.detach().clone() for (name, a), c in zip(named, current, strict=True) if a.dtype != c.dtype
            }
            super()._swap_models(pl_module)
        else:
            super()._swap_models(pl_module)
            average = dict(self._named_average())
            for name, value in self._exact.items():
                average[name].data.copy_(value)
            self._exact = {}
        self._swapped = not self._swapped

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and self.updates > 0 and not self._swapped:
            self._swap_models(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and self._swapped:
            self._swap_models(pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.updates > 0 and not self._swapped:
            self._swap_models(pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # The model keeps the average; the raw weights are in last.ckpt. A later trainer.validate
        # (of best.ckpt) then neither swaps nor loads anything.
        if stage == "fit":
            self._average_model, self._swapped, self._exact = None, False, {}

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self._average_model is None:
            return
        state = self._average_model.state_dict()
        copy = {name[len("module.") :]: value for name, value in state.items() if name.startswith("module.")}
        checkpoint["averaging_state"] = {name: value for name, value in state.items() if not name.startswith("module.")}
        if self._swapped:  # the module holds the average: state_dict already is it (but for its rounding)
            checkpoint["current_model_state"] = copy
            saved = checkpoint["state_dict"]
            saved.update({name: value.clone() for name, value in self._exact.items() if name in saved})
        elif self.updates > 0:
            checkpoint["current_model_state"], checkpoint["state_dict"] = checkpoint["state_dict"], copy
        else:  # no average yet: the raw weights are the model's (the first update will copy them)
            checkpoint["current_model_state"] = checkpoint["state_dict"]
        checkpoint["ema"] = self.describe()

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn == TrainerFn.FITTING and self._average_model is not None:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
