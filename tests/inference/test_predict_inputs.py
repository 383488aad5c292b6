"""predict's inputs and options: unique overlay names, unreadable entries listed (never dropped),
one suffix set for every input mode, and one-line ConfigErrors for bad values before the model loads."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.config import ROOT, compose
from helpers.random_checkpoint import save_random_checkpoint
from maskrcnn.errors import ConfigError, DatasetError
from maskrcnn.inference.inputs import list_inputs, overlay_names
from maskrcnn.inference.predict_images import predict


@pytest.fixture(scope="module")
def checkpoint(shapes_dir, tmp_path_factory):
    """A tiny random-init model that finds something everywhere (score_thresh=0)."""
    return save_random_checkpoint(
        tmp_path_factory.mktemp("run") / "random.ckpt", ["model.roi_heads.score_thresh=0.0"], data_dir=shapes_dir
    )


def _image(path: Path, width: int, height: int = 40) -> Path:
    """A small image whose width tells it apart from the others (overlays keep the decoded size)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _predict(checkpoint, spec, out, *extra):
    cfg = compose(
        [f"ckpt_path={checkpoint}", f"input={spec}", f"output={out}", "score_thresh=0.0", "device=cpu", *extra],
        config_name="predict",
        output_dir=out.parent,
    )
    return predict(cfg)


def _overlays(out: Path) -> dict[str, int]:
    """{overlay path below out: width}"""
    return {p.relative_to(out).as_posix(): Image.open(p).size[0] for p in out.rglob("*.png")}


def _skipped(out: Path) -> dict[str, str]:
    lines = (out / "skipped_inputs.jsonl").read_text().splitlines()
    return {Path(e["file"]).name: e["reason"] for e in map(json.loads, lines)}


def test_inputs_sharing_a_stem_in_one_folder_keep_their_suffix(checkpoint, tmp_path):
    folder = tmp_path / "in"
    for name, width in [("x.jpg", 40), ("x.png", 48), ("y.png", 56)]:
        _image(folder / name, width)
    out = tmp_path / "out"
    _predict(checkpoint, folder, out)
    assert _overlays(out) == {"x.jpg.png": 40, "x.png.png": 48, "y.png": 56}
    images = json.loads((out / "images.json").read_text())
    assert [(Path(m["file_name"]).name, m["overlay"], m["width"]) for m in images] == [
        ("x.jpg", "x.jpg.png", 40),
        ("x.png", "x.png.png", 48),
        ("y.png", "y.png", 56),
    ]
    assert len({m["file_name"] for m in images}) == 3
    results = json.loads((out / "predictions.json").read_text())
    assert {r["image_id"] for r in results} == {1, 2, 3}  # each detection names its file through images.json


def test_a_recursive_glob_mirrors_the_subfolders(checkpoint, tmp_path):
    root = tmp_path / "dir"
    for name, width in [("a/y.jpg", 40), ("b/y.jpg", 48), ("b/c/y.jpg", 56), ("z.jpg", 64)]:
        _image(root / name, width)
    out = tmp_path / "out"
    _predict(checkpoint, f"{root}/**/*.jpg", out)
    assert _overlays(out) == {"a/y.png": 40, "b/y.png": 48, "b/c/y.png": 56, "z.png": 64}
    images = json.loads((out / "images.json").read_text())
    assert {m["file_name"]: m["overlay"] for m in images} == {
        str(root / "a" / "y.jpg"): "a/y.png",
        str(root / "b" / "y.jpg"): "b/y.png",
        str(root / "b" / "c" / "y.jpg"): "b/c/y.png",
        str(root / "z.jpg"): "z.png",
    }


def test_a_folder_is_not_searched_below_and_says_so(tmp_path, caplog):
    root = tmp_path / "dir"
    _image(root / "top.jpg", 40)
    _image(root / "sub" / "deep.jpg", 40)
    with caplog.at_level(logging.WARNING):
        assert list_inputs(str(root)).files == [root / "top.jpg"]
    assert f"its 1 subfolder(s) are not searched: input='{root}/**/*' includes them" in caplog.text
    (root / "top.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"no image files .* found; its 1 subfolder\(s\) are not searched"):
        list_inputs(str(root))
    assert list_inputs(f"{root}/**/*").files == [root / "sub" / "deep.jpg"]


def test_overlay_names_are_unique_even_ignoring_case_and_deterministic():
    root = Path("/data")
    files = [root / n for n in ("X.jpg", "a/p.tif", "x.jpg", "x.jpg.png", "x.png")]
    names = overlay_names(files, root)
    assert names == {
        root / "X.jpg": "X.jpg.png",
        root / "a/p.tif": "a/p.png",
        root / "x.jpg": "x.jpg~2.png",
        root / "x.jpg.png": "x.jpg~3.png",
        root / "x.png": "x.png.png",
    }
    assert len({n.casefold() for n in names.values()}) == len(files)
    assert overlay_names(files, root) == names
    # an overlay file never takes the name of a folder other overlays go into
    nested = overlay_names([root / "z.jpg", root / "z.png/inner.jpg"], root)
    assert nested == {root / "z.jpg": "z.jpg.png", root / "z.png/inner.jpg": "z.png/inner.png"}
    # a file outside the root (a pattern like DIR/*/../*.jpg) is never written outside the output folder
    assert overlay_names([Path("/data/q.jpg")], Path("/data/sub")) == {Path("/data/q.jpg"): "q.png"}


@pytest.fixture
def hostile(tmp_path):
    """One readable PNG and GIF; entries named like images that are not regular files; files and a
    subfolder without an image suffix."""
    folder = tmp_path / "in"
    _image(folder / "good.png", 40)
    Image.fromarray(np.full((30, 44, 3), 90, np.uint8)).save(folder / "anim.gif")
    (folder / "broken.jpg").symlink_to(folder / "gone.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    (folder / "dir.png").mkdir()
    os.mkfifo(folder / "fifo.jpg")
    (folder / "notes.txt").write_text("ignored for its suffix")
    (folder / "README").write_text("ignored for its suffix")
    (folder / "sub").mkdir()  # a folder: not searched, not counted as an ignored file
    return folder


@pytest.mark.parametrize("mode", ["folder", "glob"])
def test_unreadable_entries_are_listed_as_skipped_in_every_mode(checkpoint, hostile, tmp_path, caplog, mode):
    caplog.set_level(logging.INFO)
    out = tmp_path / "out"
    _predict(checkpoint, hostile if mode == "folder" else f"{hostile}/*", out)
    reasons = _skipped(out)
    assert set(reasons) == {"broken.jpg", "loop.jpg", "dir.png", "fifo.jpg"}
    assert "is a broken symbolic link" in reasons["broken.jpg"] and "gone.jpg" in reasons["broken.jpg"]
    assert "is a symbolic link loop" in reasons["loop.jpg"]
    assert "is a directory" in reasons["dir.png"]
    assert "is not a regular file (a FIFO)" in reasons["fifo.jpg"]
    assert all(str(hostile / name) in reason for name, reason in reasons.items())  # the reason names the path
    images = json.loads((out / "images.json").read_text())
    assert [Path(m["file_name"]).name for m in images] == ["anim.gif", "good.png"]
    assert _overlays(out) == {"anim.png": 44, "good.png": 40}
    assert "ignoring 2 file(s) without an image suffix" in caplog.text
    assert "skipped 4 unreadable input(s)" in caplog.text


def test_strict_stops_at_an_entry_that_is_not_a_regular_file(checkpoint, hostile, tmp_path):
    with pytest.raises(DatasetError, match=r"broken\.jpg' is a broken symbolic link.*strict=true"):
        _predict(checkpoint, hostile, tmp_path / "out", "strict=true")  # anim.gif, broken.jpg, ...
    images = json.loads((tmp_path / "out" / "images.json").read_text())
    assert [Path(m["file_name"]).name for m in images] == ["anim.gif"]


def test_a_single_path_that_is_not_a_regular_file_is_skipped_not_missing(checkpoint, hostile, tmp_path):
    with pytest.raises(DatasetError, match="none of the 1 image file"):
        _predict(checkpoint, hostile / "broken.jpg", tmp_path / "out")
    assert "broken symbolic link" in _skipped(tmp_path / "out")["broken.jpg"]


def test_every_mode_accepts_the_same_suffixes(checkpoint, hostile, tmp_path):
    gif = hostile / "anim.gif"
    for spec in (hostile, f"{hostile}/*.gif", gif):  # folder, glob, single file
        assert gif in list_inputs(str(spec)).files
    _predict(checkpoint, gif, tmp_path / "out")
    assert _overlays(tmp_path / "out") == {"anim.png": 44}
    with pytest.raises(ConfigError, match=r"input='.*notes\.txt' is a file without an image suffix \(.*\.gif"):
        list_inputs(str(hostile / "notes.txt"))
    with pytest.raises(FileNotFoundError, match=r"input='.*\*\.txt': no image files"):
        list_inputs(f"{hostile}/*.txt")


def _no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _one_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def _no_mps(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


BAD_VALUES = [
    (["batch_size=0"], None, "batch_size=0 must be a positive integer"),
    (["batch_size=-2"], None, "batch_size=-2 must be a positive integer"),
    (["batch_size=1.5"], None, "batch_size=1.5 must be a positive integer"),
    (["batch_size=true"], None, "batch_size=True must be a positive integer"),
    (["score_thresh=1.5"], None, "score_thresh=1.5 must be a number in [0, 1]"),
    (["score_thresh=-0.1"], None, "score_thresh=-0.1 must be a number in [0, 1]"),
    (["score_thresh=nan"], None, "score_thresh=nan must be a number in [0, 1]"),
    (["score_thresh=high"], None, "score_thresh='high' must be a number in [0, 1]"),
    (["strict=yes"], None, "strict='yes' must be true or false"),
    (["device=gpu"], None, "device='gpu' is not a device predict can use (auto, cpu, cuda, cuda:N or mps)"),
    (["device=cuda:x"], None, "device='cuda:x' is not a device predict can use"),
    (["device=xpu"], None, "device='xpu' is not a device predict can use"),
    (["device=0"], None, "device=0 is not a device predict can use"),
    (["device=cuda"], _no_cuda, "device='cuda' but CUDA is not available here"),
    (["device=cuda:3"], _one_cuda, "device='cuda:3' but this machine has 1 CUDA device(s) (cuda:0 to cuda:0)"),
    (["device=mps"], _no_mps, "device='mps' but MPS (Apple GPU) is not available here"),
    (["inference=fast", "+inference.options.turbo=true"], None, "inference.options.turbo is not an option (known: "),
    (["inference=fast", "inference.options.bf16=2"], None, "inference.options.bf16=2 must be true or false"),
]


@pytest.mark.parametrize("overrides, patch, message", BAD_VALUES, ids=[" ".join(o) for o, _, _ in BAD_VALUES])
def test_bad_values_are_one_line_config_errors_before_the_model_loads(tmp_path, monkeypatch, overrides, patch, message):
    if patch is not None:
        patch(monkeypatch)
    _image(tmp_path / "in" / "a.png", 40)
    out = tmp_path / "out"
    # A missing checkpoint: reaching the model loader would raise FileNotFoundError instead.
    with pytest.raises(ConfigError) as error:
        _predict(tmp_path / "missing.ckpt", tmp_path / "in", out, *overrides)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not out.exists()  # stopped before anything was written


def test_bad_output_folders_are_config_errors_naming_output(tmp_path):
    folder = tmp_path / "in"
    _image(folder / "a.png", 40)
    (tmp_path / "file").write_text("a regular file")
    for output, message in [
        (tmp_path / "file", f"output='{tmp_path / 'file'}' is an existing file, not a folder"),
        (tmp_path / "file" / "sub", f"output='{tmp_path / 'file' / 'sub'}': cannot create the folder: Not a directory"),
        (folder, f"output='{folder}': the overlay a.png would overwrite the input '{folder / 'a.png'}'"),
    ]:
        with pytest.raises(ConfigError) as error:
            _predict(tmp_path / "missing.ckpt", folder, output)
        assert message in str(error.value)
    assert (tmp_path / "file").read_text() == "a regular file"


@pytest.mark.parametrize("kind", ["device", "output"])
def test_cli_prints_one_line_naming_the_key(tmp_path, kind):
    _image(tmp_path / "in" / "a.png", 40)
    (tmp_path / "taken").write_text("")
    arg, expected = {
        "device": ("device=cuda", "ConfigError: device='cuda' but CUDA is not available here"),
        "output": (f"output={tmp_path / 'taken'}", "is an existing file, not a folder"),
    }[kind]
    out = [f"output={tmp_path / 'out'}"] if kind == "device" else []
    proc = subprocess.run(
        [
            sys.executable,
            "src/predict.py",
            f"ckpt_path={tmp_path / 'missing.ckpt'}",
            f"input={tmp_path / 'in'}",
            *out,
            arg,
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "HYDRA_FULL_ERROR": "0"},
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    assert expected in output and "Traceback" not in output, output[-3000:]
    assert sum("[ERROR]" in line for line in output.splitlines()) == 1, output[-3000:]
