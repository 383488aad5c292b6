"""``callbacks=ema``: Lightning's EMAWeightAveraging, through this project's checkpoints, validation and resume.

One uninterrupted reference run keeps, besides the callback, its own float64 moving average of the
weights (``helpers.ema_recorder``): the checkpoints must hold that average as their weights and the
raw weights beside them, validation must run with it, and a run stopped by SIGTERM must save both
(also during validation, when the average is swapped into the model), restore both when resumed,
and, stopped after a training step, end exactly as the reference did.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor

from helpers.config import TINY, TINY_EVAL, compose
from helpers.ema_recorder import EMARecorder, fingerprint
from maskrcnn.errors import ConfigError
from maskrcnn.run_checkpoint import build_net_from_checkpoint, describe_checkpoint
from maskrcnn.training.builders import build_callbacks
from maskrcnn.training.interrupts import TrainingInterrupted
from maskrcnn.training.module import MaskRCNNModule
from maskrcnn.training.pipeline import evaluate, train

# 12 images at batch 2: 6 steps per epoch; validation (one batch) at step 6, the run ends at step 8.
# decay 0.5 and a first update at zero-based step 2 make the average far from the raw weights and
# a missed or extra update visible.
DECAY, START = 0.5, 2
RUN = [
    *TINY,
    "trainer.max_epochs=2",
    "trainer.max_steps=8",
    "trainer.limit_val_batches=1",
    "callbacks=ema",
    "callbacks.rich_progress_bar=null",
    "callbacks.progress_log=null",
    f"callbacks.ema.decay={DECAY}",
    f"callbacks.ema.update_starting_at_step={START}",
    "augmentation=multiscale",
    "scheduler.warmup_steps=5",
    "validate_after_train=false",
    "logger=none",
    "dataset_report=false",
]
RECORDER = [
    "+callbacks.ema_recorder._target_=helpers.ema_recorder.EMARecorder",
    f"+callbacks.ema_recorder.decay={DECAY}",
    f"+callbacks.ema_recorder.start={START}",
    "+callbacks.ema_recorder.snapshot_steps=[3,6]",
]


def _signal(path, step: int, in_validation: bool = False) -> list[str]:
    return [
        "+callbacks.stop._target_=helpers.step_recorder.StepRecorder",
        f"+callbacks.stop.path={path}",
        f"+callbacks.stop.signal_at_step={step}",
        f"+callbacks.stop.signal_in_validation={in_validation}",
    ]


def _ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_weights(state: dict, expected: dict, what: str) -> None:
    assert set(expected) <= set(state), what
    for name, tensor in expected.items():
        label = f"{what}: {name}"
        close = torch.testing.assert_close
        close(state[name].double(), tensor.double(), rtol=1e-5, atol=1e-6, msg=lambda m, label=label: f"{label}: {m}")


@pytest.fixture(scope="module")
def reference(shapes_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ema_ref")
    # The thread count of the runs it is compared with (conftest's function-scoped _threads is not
    # applied yet when a module-scoped fixture runs); float sums follow it.
    torch.set_num_threads(2)
    # validate_after_train: trainer.validate(best.ckpt) in the same process, after fit
    cfg = compose([*RUN, *RECORDER, "validate_after_train=true"], output_dir=run_dir, data_dir=shapes_dir)
    _, objects = train(cfg)
    recorder = next(c for c in objects["trainer"].callbacks if isinstance(c, EMARecorder))
    return SimpleNamespace(dir=run_dir, recorder=recorder, last=_ckpt(run_dir / "checkpoints" / "last.ckpt"))


def test_checkpoints_hold_the_average_of_the_raw_weights_and_validation_ran_with_it(reference):
    rec, last = reference.recorder, reference.last
    assert last["global_step"] == 8 and last["ema"]["updates"] == 8 - START and last["ema"]["state_dict"] == "ema"
    assert int(last["averaging_state"]["n_averaged"]) == 8 - START
    _assert_weights(last["state_dict"], rec.ema, "last.ckpt state_dict (the average)")
    _assert_weights(last["current_model_state"], rec.raw, "last.ckpt current_model_state (raw)")
    assert max((rec.ema[k] - rec.raw[k]).abs().max().item() for k in rec.ema) > 1e-4  # the two really differ

    best = _ckpt(reference.dir / "checkpoints" / "best.ckpt")  # written at the validation of step 6
    ema6, raw6 = rec.snapshots[6]
    assert best["global_step"] == 6 and best["ema"]["updates"] == 6 - START
    _assert_weights(best["state_dict"], ema6, "best.ckpt state_dict")
    _assert_weights(best["current_model_state"], raw6, "best.ckpt current_model_state")
    # the validation during fit, and the one of best.ckpt after it, ran with the average
    assert rec.validated_with[("fit", 6)] == pytest.approx(fingerprint(ema6), rel=1e-9)
    assert rec.validated_with[("fit", 6)] != pytest.approx(fingerprint(raw6), rel=1e-9)
    after_fit = [value for (stage, _), value in rec.validated_with.items() if stage == "validate"]
    assert after_fit == [pytest.approx(fingerprint(ema6), rel=1e-9)]
    summary = (reference.dir / "run_summary.txt").read_text()
    assert f"ema       decay {DECAY}, from step {START}, every 1 step(s); validation and checkpoints" in summary


def test_the_average_does_not_change_training_the_raw_weights_are_those_of_a_run_without_it(
    reference, shapes_dir, tmp_path
):
    """What a run trains does not depend on callbacks=ema: its raw weights are bit-for-bit those of
    the same run without it (the benchmark scores an EMA run's raw weights as the run without EMA)."""
    without = [o for o in RUN if not o.startswith(("callbacks=", "callbacks.ema."))] + ["callbacks=default"]
    train(compose(without, output_dir=tmp_path, data_dir=shapes_dir))
    plain = _ckpt(tmp_path / "checkpoints" / "last.ckpt")
    assert plain["global_step"] == 8 and "ema" not in plain and "current_model_state" not in plain
    raw = reference.last["current_model_state"]
    assert plain["state_dict"].keys() == raw.keys()
    differ = [name for name, tensor in raw.items() if not torch.equal(plain["state_dict"][name], tensor)]
    assert not differ, f"raw weights of the EMA run differ from the run without EMA: {differ[:5]}"


def test_eval_predict_and_export_load_the_averaged_weights_and_say_so(reference, tmp_path, monkeypatch):
    best = reference.dir / "checkpoints" / "best.ckpt"
    ckpt = _ckpt(best)
    ema6 = {k[len("net.") :]: v for k, v in reference.recorder.snapshots[6][0].items() if k.startswith("net.")}
    _assert_weights(build_net_from_checkpoint(ckpt, best).state_dict(), ema6, "predict / export network")

    said: list[str] = []
    monkeypatch.setattr("maskrcnn.training.pipeline.rank_zero_info", said.append)
    cfg = compose(
        [*TINY_EVAL, f"ckpt_path={best}", "trainer.limit_val_batches=1"], config_name="eval", output_dir=tmp_path
    )
    evaluate(cfg, overrides=[f"ckpt_path={best}"])
    expected = f"Evaluating {describe_checkpoint(best, ckpt)}"
    assert expected in said and f"EMA weights, decay {DECAY}, {6 - START} updates)" in expected, said


@pytest.mark.parametrize("in_validation", [False, True], ids=["after_a_step", "during_validation"])
def test_a_sigterm_stop_saves_both_weight_sets_and_resumes_to_the_uninterrupted_run(
    in_validation, reference, shapes_dir, tmp_path
):
    step = 6 if in_validation else 3
    with pytest.raises(TrainingInterrupted):
        signal = _signal(tmp_path / "steps.jsonl", step, in_validation)
        train(compose([*RUN, *signal], output_dir=tmp_path, data_dir=shapes_dir))
    stopped = _ckpt(tmp_path / "checkpoints" / "last.ckpt")
    ema, raw = reference.recorder.snapshots[step]
    assert stopped["global_step"] == step and stopped["ema"]["updates"] == step - START
    _assert_weights(stopped["state_dict"], ema, "stopped state_dict (the average)")
    _assert_weights(stopped["current_model_state"], raw, "stopped current_model_state (raw)")

    _, objects = train(compose([*RUN, *RECORDER, "ckpt_path=last"], output_dir=tmp_path, data_dir=shapes_dir))
    resumed = next(c for c in objects["trainer"].callbacks if isinstance(c, EMARecorder))
    restored = (step, pytest.approx(fingerprint(raw), rel=1e-9), pytest.approx(fingerprint(ema), rel=1e-9))
    assert resumed.first_batch == restored  # the model got the raw weights back, the callback the average
    final, ref = _ckpt(tmp_path / "checkpoints" / "last.ckpt"), reference.last
    assert final["global_step"] == 8 and final["ema"] == ref["ema"]
    assert final["callbacks"]["EMAWeights"] == ref["callbacks"]["EMAWeights"]
    _assert_weights(final["state_dict"], ref["state_dict"], "resumed state_dict (the average)")
    _assert_weights(final["current_model_state"], ref["current_model_state"], "resumed current_model_state")


def test_resuming_an_ema_checkpoint_without_ema_continues_from_the_raw_weights():
    module = MaskRCNNModule(torch.nn.Linear(1, 1), torch.nn.Identity(), dict.fromkeys(_terms(), 1.0))
    checkpoint = {"state_dict": {"average": 1}, "current_model_state": {"raw": 2}}
    module._trainer = SimpleNamespace(callbacks=[], state=SimpleNamespace(fn="fit"))
    module.on_load_checkpoint(checkpoint)
    assert checkpoint["state_dict"] == {"raw": 2}
    module._trainer.state.fn = "validate"  # evaluating a checkpoint keeps its averaged weights
    checkpoint = {"state_dict": {"average": 1}, "current_model_state": {"raw": 2}}
    module.on_load_checkpoint(checkpoint)
    assert checkpoint["state_dict"] == {"average": 1}


def test_ema_keys_without_callbacks_ema_are_one_error_naming_the_option():
    cfg = compose([*TINY, "+callbacks.ema.decay=0.99"], output_dir="/tmp/unused")
    with pytest.raises(ConfigError, match=r"^callbacks\.ema has no _target_ .*callbacks=ema"):
        build_callbacks(cfg)


def _terms() -> tuple[str, ...]:
    from maskrcnn.losses.criterion import TERMS

    return tuple(TERMS)


def test_ema_under_ddp_keeps_and_checkpoints_the_average(shapes_dir, tmp_path):
    """2 CPU processes (trainer=ddp_sim): the run trains, validates with the average (best.ckpt) and
    its checkpoints hold the average with the update count of the steps taken on each rank."""
    run = [*RUN, "trainer=ddp_sim", "callbacks.rich_progress_bar=null"]
    train(compose(run, output_dir=tmp_path, data_dir=shapes_dir))
    last = _ckpt(tmp_path / "checkpoints" / "last.ckpt")
    # 12 images over 2 ranks at batch 2: 3 steps per epoch, 2 epochs
    assert last["global_step"] == 6 and last["ema"]["updates"] == 6 - START
    assert int(last["averaging_state"]["n_averaged"]) == 6 - START
    average, raw = last["state_dict"], last["current_model_state"]
    assert average.keys() == raw.keys()
    assert max((average[k].double() - raw[k].double()).abs().max().item() for k in average) > 1e-4
    best = _ckpt(tmp_path / "checkpoints" / "best.ckpt")  # written by the validation at step 3
    assert best["global_step"] == 3 and best["ema"]["updates"] == 3 - START


def test_the_picklable_update_is_torchs_ema_update():
    import pickle

    from torch.optim.swa_utils import get_ema_avg_fn

    from maskrcnn.training.ema import EMAUpdate, EMAWeights

    ema, current = torch.randn(5, 3), torch.randn(5, 3)
    ours = pickle.loads(pickle.dumps(EMAUpdate(0.93)))
    assert torch.equal(ours(ema, current, 4), get_ema_avg_fn(0.93)(ema, current, 4))
    pickle.dumps(EMAWeights(decay=0.9))  # what ddp_spawn does with every callback


class _TinyHalfModule(pl.LightningModule):
    """One linear layer: Lightning's precision plugins work on it on CPU (Mask R-CNN's NMS has no
    bfloat16 CPU kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(16, 1)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        return self.layer(batch[0]).float().pow(2).mean()

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        self.log("val/loss", self.layer(batch[0]).float().pow(2).mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class _AverageWatcher(pl.Callback):
    """Records the raw weights after each step (float64) and the callback's average around validation."""

    def __init__(self, ema: object, path: Path) -> None:
        self.ema, self.path, self.raw, self.before_val, self.after_val = ema, path, [], None, None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        self.raw.append(pl_module.layer.weight.detach().double().clone())

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step == 2:  # listed before the EMA callback: not swapped in yet
            self.before_val = self.ema._average_model.module.layer.weight.detach().clone()

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        if trainer.global_step == 2:  # the average is swapped in: what a stop during validation saves
            trainer.save_checkpoint(self.path)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        if trainer.global_step == 2:  # the first step after validation
            self.after_val = self.ema._average_model.module.layer.weight.detach().clone()
            self.raw_after_val = pl_module.layer.weight.detach().clone()


@pytest.mark.parametrize("precision", ["16-true", "bf16-true"])
def test_ema_with_half_precision_weights_keeps_a_float32_average(tmp_path, precision):
    """Half-precision weights: the average is float32 and takes updates a half-precision average
    rounds away; validation's swap in and out leaves the average and the raw weights bit-exact; a
    checkpoint written while swapped holds the float32 average as its weights."""
    from maskrcnn.training.ema import EMAWeights

    average, weight, decay = torch.tensor(1.0, dtype=torch.bfloat16), torch.tensor(1.2, dtype=torch.bfloat16), 0.999
    assert decay * average + (1 - decay) * weight == average  # what a bfloat16 average would do

    torch.manual_seed(0)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 16)), batch_size=4)
    ema = EMAWeights(decay=decay)
    watcher = _AverageWatcher(ema, tmp_path / "during_val.ckpt")
    trainer = pl.Trainer(
        max_steps=4,
        precision=precision,
        val_check_interval=2,
        limit_val_batches=1,
        callbacks=[watcher, ema],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_TinyHalfModule(), data, data)
    assert watcher.before_val.dtype == torch.float32 and watcher.raw[0].dtype == torch.float64
    assert torch.equal(watcher.before_val, watcher.after_val)  # the swap back kept the float32 average
    assert torch.equal(watcher.raw_after_val.double(), watcher.raw[1])  # and the raw weights
    expected = watcher.raw[0]  # the first update copies the weights
    for raw in watcher.raw[1:]:
        expected = decay * expected + (1 - decay) * raw
    torch.testing.assert_close(ema_final := trainer.model.layer.weight.detach().double(), expected, atol=1e-2, rtol=0)
    assert not torch.equal(expected.to(ema_final.dtype), watcher.raw[-1])  # the average moved off the raw weights
    checkpoint = torch.load(tmp_path / "during_val.ckpt", weights_only=False)
    assert torch.equal(checkpoint["state_dict"]["layer.weight"], watcher.before_val)  # float32, not its rounding
    assert torch.equal(checkpoint["current_model_state"]["layer.weight"].double(), watcher.raw[1])
