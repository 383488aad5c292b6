"""Every checkpoint a run (``ckpt_path``, ``model.init_from``), eval, predict or export reads goes through one
checked loader: a truncated file, a file that is no checkpoint (text, empty, random bytes, a directory, a
FIFO), one from another project, or one built for another ``num_classes`` / architecture ends with one
line naming the path and the cause (exit status 1 through the entry points)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.config import TINY, compose
from helpers.random_checkpoint import save_random_checkpoint
from helpers.scripts import load_script, run_entry_point
from maskrcnn.checkpoint_file import load_checkpoint_file
from maskrcnn.errors import CheckpointError
from maskrcnn.inference.predict_images import load_checkpoint_model
from maskrcnn.modeling.build import build_mask_rcnn
from maskrcnn.training.pipeline import evaluate, train


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A training-format checkpoint of the tiny model (3 classes) with the keys a resume needs."""
    path = save_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "good.ckpt")
    ckpt = torch.load(path, weights_only=False)
    ckpt.update(optimizer_states=[], lr_schedulers=[], loops={}, epoch=0, global_step=0)
    torch.save(ckpt, path)
    return path


def _bad_files(tmp_path: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, the cause its message must give)."""
    data = good.read_bytes()
    files = {
        "truncated": (data[: len(data) // 2], "is truncated or damaged"),
        "text": (b"model: resnet50\nepochs: 12\n", "is a text file"),
        "empty": (b"", "is empty (0 bytes)"),
        "random": (bytes(range(7, 256)) * 3, "is not a PyTorch file"),
    }
    out = {}
    for name, (content, cause) in files.items():
        (tmp_path / f"{name}.ckpt").write_bytes(content)
        out[name] = (tmp_path / f"{name}.ckpt", cause)
    torch.save({"encoder": {"w": torch.zeros(2)}, "epoch": 3}, tmp_path / "other_project.ckpt")
    out["other_project"] = (tmp_path / "other_project.ckpt", "not a training checkpoint")
    (tmp_path / "folder.ckpt").mkdir()
    out["directory"] = (tmp_path / "folder.ckpt", "is a directory")
    os.mkfifo(tmp_path / "fifo.ckpt")
    out["fifo"] = (tmp_path / "fifo.ckpt", "is not a regular file")
    weights = torch.load(good, weights_only=False)
    for key in ("optimizer_states", "loops", "epoch", "global_step"):
        del weights[key]
    torch.save(weights, tmp_path / "weights_only.ckpt")
    out["weights_only"] = (tmp_path / "weights_only.ckpt", "no training state to resume")
    return out


def _one_line(fn, *args, caplog, **kwargs) -> str:
    """Run ``fn`` under the entry points' wrapper: it must exit with status 1 and log one message."""
    from maskrcnn.cli import exit_on_expected_errors

    caplog.clear()
    with pytest.raises(SystemExit) as info:
        exit_on_expected_errors(fn)(*args, **kwargs)
    assert info.value.code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0] and "Traceback" not in errors[0], errors
    return errors[0]


def test_train_resume_eval_predict_export_name_path_and_cause(good, tmp_path, shapes_dir, caplog, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    export = load_script("export")
    for name, (path, cause) in _bad_files(tmp_path, good).items():
        where = f"ckpt_path='{path}'"
        cfg = compose([*TINY, f"ckpt_path={path}"], output_dir=tmp_path / "run", data_dir=shapes_dir)
        message = _one_line(train, cfg, caplog=caplog)
        assert where in message and cause in message, (name, message)
        if name == "weights_only":
            continue  # eval, predict and export only need the weights
        eval_cfg = compose([f"ckpt_path={path}"], config_name="eval", output_dir=tmp_path / "eval")
        for message in (
            _one_line(evaluate, eval_cfg, caplog=caplog),
            _one_line(load_checkpoint_model, path, caplog=caplog),
            _one_line(export.main, ["--ckpt", str(path), "--out", str(tmp_path / "m.pt")], caplog=caplog),
        ):
            assert str(path) in message and cause.replace("training checkpoint", "") in message, (name, message)


def test_resume_with_another_num_classes_names_both_numbers(good, tmp_path, shapes_dir, caplog, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    cfg = compose([*TINY, f"ckpt_path={good}", "data.num_classes=5"], output_dir=tmp_path, data_dir=shapes_dir)
    message = _one_line(train, cfg, caplog=caplog)
    assert f"ckpt_path='{good}' was trained for num_classes=3" in message and "data.num_classes=5" in message
    cfg = compose(
        [*TINY, f"ckpt_path={good}", "model.backbone.out_channels=16"], output_dir=tmp_path, data_dir=shapes_dir
    )
    message = _one_line(train, cfg, caplog=caplog)
    assert "was built for another architecture" in message and "backbone.fpn" in message


def test_eval_with_another_num_classes_names_both_numbers(good, tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    overrides = [f"ckpt_path={good}", "data.num_classes=7", "model.num_classes=7"]
    cfg = compose(overrides, config_name="eval", output_dir=tmp_path / "eval", data_dir=tmp_path / "nothing")
    message = _one_line(evaluate, cfg, overrides=overrides, caplog=caplog)
    assert "was trained for num_classes=3" in message and "data.num_classes=7" in message


def test_init_from_files_that_are_not_torchvision_weights(good, tmp_path):
    bad = _bad_files(tmp_path, good)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "foreign.pth")
    cases = [
        (bad["truncated"][0], "is truncated or damaged"),
        (bad["text"][0], "is a text file"),
        (bad["empty"][0], "is empty"),
        (bad["directory"][0], "is a directory"),
        (good, "is a checkpoint of src/train.py"),
        (tmp_path / "foreign.pth", "shares no layer name"),
    ]
    for path, cause in cases:
        with pytest.raises(CheckpointError, match=rf"model.init_from='{path}' .*{cause}"):
            build_mask_rcnn(3, {"name": "resnet18", "pretrained": False}, init_from=str(path))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 0.999), junk=st.binary(min_size=1, max_size=64))
def test_any_truncation_or_junk_is_one_checkpoint_error(good, tmp_path, cut, junk):
    data = good.read_bytes()
    for name, content in (("cut", data[: int(len(data) * cut)]), ("junk", junk), ("tail", data[: -1 - len(junk)])):
        path = tmp_path / f"{name}.ckpt"
        path.write_bytes(content)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint_file(path, "ckpt_path")
        assert str(info.value).startswith(f"ckpt_path='{path}' ") and "\n" not in str(info.value)


def test_train_entry_point_with_a_truncated_checkpoint_exits_1_with_one_line(good, tmp_path, shapes_dir):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:5000])
    proc = run_entry_point(
        "src/train.py",
        *TINY,
        f"paths.data_dir={shapes_dir}",
        f"ckpt_path={truncated}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and f"ckpt_path='{truncated}' is truncated or damaged" in errors[0], output[-3000:]


def test_a_checkpoint_path_with_a_name_too_long_is_named(tmp_path, shapes_dir, caplog, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    path = tmp_path / ("x" * 300 + ".ckpt")
    cfg = compose([*TINY, f"ckpt_path={path}"], output_dir=tmp_path / "run", data_dir=shapes_dir)
    for message in (_one_line(train, cfg, caplog=caplog), _one_line(load_checkpoint_model, path, caplog=caplog)):
        assert f"ckpt_path='{path}' has a name too long for the file system" in message
    with pytest.raises(CheckpointError, match="model.init_from='.*' has a name too long"):
        build_mask_rcnn(3, {"name": "resnet18", "pretrained": False}, init_from=str(path))
