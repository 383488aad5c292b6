"""Plain progress lines: rates and ETA from all training time since the last line, with a fake clock."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import pytest
import torch

from maskrcnn.training.progress_log import ProgressLog, format_rate

STEP_SECONDS, VAL_SECONDS, STEPS_PER_EPOCH, EPOCHS, BATCH = 2.0, 5.0, 6, 5, 2


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _trainer(max_epochs: int = EPOCHS) -> SimpleNamespace:
    return SimpleNamespace(
        global_step=0,
        current_epoch=0,
        max_epochs=max_epochs,
        max_steps=-1,
        is_global_zero=True,
        world_size=1,
        estimated_stepping_batches=STEPS_PER_EPOCH * max_epochs,
        sanity_checking=False,
        optimizers=[SimpleNamespace(param_groups=[{"lr": 0.01}])],
        state=SimpleNamespace(fn="fit"),
        callback_metrics={},
    )


def _simulate(callback: ProgressLog, clock: FakeClock, trainer, epochs: int = EPOCHS) -> list[tuple[float, int]]:
    """A fit loop of ``epochs`` epochs (6 steps each, validation after each); returns (time, step) per line."""
    callback.on_train_start(trainer, None)
    batch = ([torch.zeros(1)] * BATCH, [{}] * BATCH)
    for epoch in range(epochs):
        trainer.current_epoch = epoch
        for _ in range(STEPS_PER_EPOCH):
            clock.now += STEP_SECONDS
            trainer.global_step += 1
            callback.on_train_batch_end(trainer, None, {"loss": torch.tensor(1.0)}, batch, 0)
        callback.on_validation_start(trainer, None)
        clock.now += VAL_SECONDS
        callback.on_validation_end(trainer, None)
    callback.on_train_end(trainer, None)
    return clock.now


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "maskrcnn.progress"]


def _seconds(eta: str) -> int:
    h, m, s = (int(x) for x in eta.split(":"))
    return 3600 * h + 60 * m + s


def test_eta_is_within_20_percent_when_epochs_are_shorter_than_the_interval(caplog):
    clock = FakeClock()
    callback = ProgressLog(every_n_steps=20, when="always", every_n_seconds=0, clock=clock)
    times = {}
    original = callback._write

    def write(trainer, step):
        times[step] = clock.now
        original(trainer, step)

    callback._write = write
    with caplog.at_level(logging.INFO, logger="maskrcnn.progress"):
        end = _simulate(callback, clock, _trainer())
    lines = _lines(caplog)
    assert [int(re.match(r"step (\d+)/30", line).group(1)) for line in lines] == [20]
    eta = _seconds(re.search(r"ETA (\S+)", lines[0]).group(1))
    actual_left = end - times[20]
    assert abs(eta - actual_left) <= 0.2 * actual_left, (eta, actual_left)
    # 20 steps of 2 images over 20 steps x 2 s of training: validation is not training time
    assert re.search(r" 1\.00 img/s", lines[0]), lines[0]


def test_a_line_every_n_seconds_before_every_n_steps(caplog):
    clock = FakeClock()
    callback = ProgressLog(every_n_steps=1000, when="always", every_n_seconds=60, clock=clock)
    with caplog.at_level(logging.INFO, logger="maskrcnn.progress"):
        _simulate(callback, clock, _trainer())
    steps = [int(re.match(r"step (\d+)/", line).group(1)) for line in _lines(caplog)]
    # 60 s of training = 30 steps of 2 s; the validations in between do not count
    assert steps == [30]


def test_slow_rates_keep_their_digits():
    assert format_rate(0.0123) == "0.012"
    assert format_rate(0.004) == "0.004"
    assert format_rate(1.0) == "1.00" and format_rate(41.26) == "41.3" and format_rate(1234.4) == "1234"
    assert format_rate(0.0004) == "0.0004"


@pytest.mark.parametrize("value", [0, -1])
def test_bad_interval_is_rejected(value):
    with pytest.raises(ValueError, match="every_n_steps"):
        ProgressLog(every_n_steps=value)


def test_no_progress_bar_when_stdout_is_not_a_terminal(tmp_path, monkeypatch):
    import pytorch_lightning as pl

    from helpers.config import TINY, compose
    from maskrcnn.training.builders import build_trainer

    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    cfg = compose([*TINY, "callbacks=default", "trainer.val_check_interval=0.5"], output_dir=tmp_path)
    trainer = build_trainer(cfg)
    assert trainer.progress_bar_callback is None  # no Rich live display, no refresh thread, no tqdm
    assert not any(isinstance(c, pl.callbacks.ProgressBar) for c in trainer.callbacks)
    assert trainer.val_check_interval == 0.5  # settable without "+"
