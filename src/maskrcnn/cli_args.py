"""argparse types shared by the scripts: a bad value ends with argparse's one-line usage error
naming the option (exit status 2), never a traceback from deep in the tool.

    parser.add_argument("--min-size", type=positive_int)
    parser.add_argument("--out", type=output_file)
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def _int_at_least(text: str, low: int, requirement: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {requirement}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An integer >= 0 (e.g. warm-up iterations)."""
    return _int_at_least(text, 0, ">= 0")


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def unit_fraction(text: str) -> float:
    """A number in (0, 1] (an IoU threshold)."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def output_file(text: str) -> str:
    """A file to write: not an existing folder (its parent folder is created when written)."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give the file to write")
    return text


def output_folder(text: str) -> str:
    """A folder to write into: not an existing file (it is created when missing)."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is an existing file, not a folder")
    return text
