"""Shared fixtures: tiny, fast override lists and a small synthetic dataset.

Plain code shared by the tests (``compose``, paths, tiny models) is in ``tests/helpers/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers.config import TINY, TINY_EVAL

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")
# Child processes the tests start (``python -c``, ``-m bench...``) import ``bench`` and ``helpers``
# from the folders pytest's ``pythonpath`` setting gives this process.
_ROOT = Path(__file__).resolve().parents[1]
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(_ROOT / "scripts"), str(_ROOT / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])]
)


@pytest.fixture(scope="session")
def tiny() -> tuple[str, ...]:
    """Overrides of ``train.yaml`` for a tiny model and dataset: a real run takes seconds."""
    return tuple(TINY)


@pytest.fixture(scope="session")
def tiny_eval() -> tuple[str, ...]:
    """``tiny`` for ``eval.yaml``, which has no optimizer / scheduler / callbacks groups."""
    return tuple(TINY_EVAL)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """Data dir with a tiny synthetic shapes set (12 train / 5 val images of 64 px)."""
    from maskrcnn.data.shapes import generate_shapes

    data_dir = tmp_path_factory.mktemp("data")
    generate_shapes(data_dir / "shapes", num_train=12, num_val=5, image_size=64, seed=0)
    return data_dir


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    yield
