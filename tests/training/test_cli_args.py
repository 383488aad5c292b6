"""The scripts' option types (maskrcnn.cli_args) and the scripts using them: a bad value is argparse's
one-line error naming the option, exit status 2, never a traceback from inside the tool."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers.config import ROOT
from maskrcnn.cli_args import output_file, output_folder, positive_float, positive_int, unit_fraction
from maskrcnn.data.datamodule import CocoDataModule
from maskrcnn.errors import ConfigError

NUTS = ROOT / "tests" / "assets" / "nuts"


@given(st.integers(-(10**6), 10**6))
def test_positive_int_accepts_exactly_the_integers_from_one(value):
    if value >= 1:
        assert positive_int(str(value)) == value
    else:
        with pytest.raises(argparse.ArgumentTypeError, match=f"must be a positive integer, got {value}"):
            positive_int(str(value))


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_number_types_accept_finite_positive_values_only(value):
    text = repr(value)
    if math.isfinite(value) and value > 0:
        assert positive_float(text) == value
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            positive_float(text)
    if math.isfinite(value) and 0 < value <= 1:
        assert unit_fraction(text) == value
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            unit_fraction(text)


def test_words_and_paths(tmp_path):
    for parse in (positive_int, positive_float, unit_fraction):
        with pytest.raises(argparse.ArgumentTypeError, match="'two' is not"):
            parse("two")
    a_file = tmp_path / "a.json"
    a_file.write_text("{}")
    assert output_file(str(a_file)) == str(a_file) and output_folder(str(tmp_path / "new")) == str(tmp_path / "new")
    with pytest.raises(argparse.ArgumentTypeError, match="is a folder"):
        output_file(str(tmp_path))
    with pytest.raises(argparse.ArgumentTypeError, match="is an existing file, not a folder"):
        output_folder(str(a_file))


@pytest.mark.parametrize(
    "script, args, message",
    [
        (
            "dataset_report.py",
            ["--train", str(NUTS / "annotations.json"), "--min-size", "0"],
            "argument --min-size: must be a positive integer, got 0",
        ),
        (
            "dataset_report.py",
            ["--train", str(NUTS / "annotations.json"), "--anchor-sizes", "32", "-3"],
            "argument --anchor-sizes: must be a positive number, got -3",
        ),
        (
            "dataset_report.py",
            ["--train", str(NUTS / "annotations.json"), "--rpn-fg-iou", "1.5"],
            "argument --rpn-fg-iou: must be in (0, 1], got 1.5",
        ),
        ("dataset_report.py", ["--train", str(NUTS / "annotations.json"), "--out", "{tmp}"], "is a folder"),
        (
            "browse_dataset.py",
            ["--images", str(NUTS / "images"), "--ann", str(NUTS / "annotations.json"), "--out", "{tmp}/file.txt"],
            "is an existing file, not a folder",
        ),
        (
            "generate_shapes.py",
            ["--out", "{tmp}/shapes", "--size", "8"],
            "argument --size: must be at least 32 px, got 8",
        ),
        (
            "generate_shapes.py",
            ["--out", "{tmp}/shapes", "--val", "0"],
            "argument --val: must be a positive integer, got 0",
        ),
        (
            "benchmark.py",
            ["--task", "data", "--data-images", "0"],
            "argument --data-images: must be a positive integer, got 0",
        ),
        ("benchmark.py", ["--task", "model", "--warmup", "-1"], "argument --warmup: must be >= 0, got -1"),
        (
            "benchmark.py",
            ["--task", "memory", "--mem-max-output-gb", "nan"],
            "argument --mem-max-output-gb: must be a positive number",
        ),
    ],
)
def test_scripts_reject_bad_options_in_one_line(tmp_path, script, args, message):
    (tmp_path / "file.txt").write_text("not a folder")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "shapes").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"num_train": 0}, "data.generate_shapes.num_train=0 must be an integer >= 1"),
        ({"image_size": 16}, "data.generate_shapes.image_size=16 must be an integer >= 32"),
        ({"num_val": "ten"}, "data.generate_shapes.num_val='ten' must be an integer >= 1"),
    ],
)
def test_generated_data_options_are_config_errors(tmp_path, options, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        CocoDataModule(generate_shapes={"out_dir": str(tmp_path / "shapes"), **options})
