"""Expected errors (bad data, bad config, missing file, unusable checkpoint) end an entry point
with one message and exit status 1, without Hydra's traceback; unexpected ones keep it."""

from __future__ import annotations

import subprocess

import pytest
from hydra.errors import InstantiationException

from helpers.random_checkpoint import save_random_checkpoint
from helpers.scripts import run_entry_point
from maskrcnn.cli import error_message, exit_on_expected_errors, expected_error
from maskrcnn.errors import ConfigError, DatasetError


def _raising(exc: BaseException):
    @exit_on_expected_errors
    def main():
        raise exc

    return main


def test_expected_errors_exit_with_their_message(monkeypatch, caplog):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as info:
        _raising(DatasetError("train.json: image id 7 has no file_name"))()
    assert info.value.code == 1
    assert caplog.messages == ["DatasetError: train.json: image id 7 has no file_name"]
    # Wrapped by Hydra's instantiate (data module / model constructors): the cause is reported.
    wrapped = InstantiationException("Error in call to target 'x'")
    wrapped.__cause__ = ConfigError("data.batch_size=-1 must be a positive integer")
    with pytest.raises(SystemExit):
        _raising(wrapped)()
    assert caplog.messages[-1] == "ConfigError: data.batch_size=-1 must be a positive integer"
    with pytest.raises(SystemExit):
        _raising(FileNotFoundError("input='photos/*.jpg': no image files found"))()


def test_unexpected_errors_and_full_error_keep_the_traceback(monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(KeyError):
        _raising(KeyError("a bug"))()
    wrapped = InstantiationException("Error in call to target 'x'")
    wrapped.__cause__ = TypeError("a bug")
    with pytest.raises(InstantiationException):
        _raising(wrapped)()
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(DatasetError):
        _raising(DatasetError("bad"))()


def test_dataloader_worker_errors_keep_only_the_original_message():
    text = (
        "Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "coco.py", line 3, in load\n    raise DatasetError(...)\n'
        "maskrcnn.errors.DatasetError: image file 'a.jpg' (image id 3) is corrupt or truncated"
    )
    assert error_message(DatasetError(text)) == "DatasetError: image file 'a.jpg' (image id 3) is corrupt or truncated"


def test_errors_of_ddp_spawn_workers_are_recognised():
    from torch.multiprocessing import ProcessRaisedException

    text = (
        "\n\n-- Process 1 terminated with the following error:\nTraceback (most recent call last):\n"
        '  File "module.py", line 134, in _is_nonfinite\n'
        "maskrcnn.errors.NonFiniteLossError: nonfinite_loss=skip: 5 of the last 5 training steps"
    )
    found = expected_error(ProcessRaisedException(text, 1, 123))
    assert error_message(found) == "NonFiniteLossError: nonfinite_loss=skip: 5 of the last 5 training steps"
    assert (
        expected_error(
            ProcessRaisedException(text.replace("maskrcnn.errors.NonFiniteLossError", "RuntimeError"), 1, 123)
        )
        is None
    )


def _one_message(proc: subprocess.CompletedProcess, expected: str) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    assert expected in output and "Traceback" not in output and "Error executing job" not in output, output[-3000:]
    assert sum("[ERROR]" in line for line in output.splitlines()) == 1, output[-3000:]


def test_entry_points_end_with_one_message(tiny, tmp_path, shapes_dir):
    # src/eval.py uses the same wrapper; its CheckpointError is tested in test_eval_from_checkpoint.py.
    hydra_dir = f"hydra.run.dir={tmp_path / 'run'}"
    _one_message(
        run_entry_point("src/train.py", *tiny, "data.batch_size=-1", f"paths.data_dir={shapes_dir}", hydra_dir),
        "ConfigError: data.batch_size=-1 must be a positive integer",
    )
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (inputs / "b.png").write_bytes(b"")
    ckpt = save_random_checkpoint(tmp_path / "random.ckpt")
    proc = run_entry_point(
        "src/predict.py", f"ckpt_path={ckpt}", f"input={inputs}", f"output={tmp_path / 'out'}", hydra_dir
    )
    _one_message(proc, f"DatasetError: input='{inputs}': none of the 2 image file(s) could be read")
    assert (tmp_path / "out" / "skipped_inputs.jsonl").read_text().count("\n") == 2
