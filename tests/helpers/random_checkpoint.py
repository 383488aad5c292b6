"""A training-format checkpoint of a randomly initialised tiny model, written in a second (no training).

It has what ``src/train.py`` stores: ``state_dict`` (``net.*``), ``run_config``, ``class_names`` and
``label_to_category_id``, so eval, predict and export accept it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from helpers.config import TINY, compose

SHAPES_CLASSES = ["__background__", "square", "circle", "triangle"]


def save_random_checkpoint(path: Path, overrides: list[str] = (), data_dir: Path | None = None) -> Path:
    from maskrcnn.training.builders import build_module

    torch.manual_seed(0)
    module = build_module(compose([*TINY, *overrides], output_dir=path.parent, data_dir=data_dir))
    torch.save(
        {
            "state_dict": module.state_dict(),
            "run_config": module.run_config,
            "class_names": SHAPES_CLASSES,
            "label_to_category_id": {1: 1, 2: 2, 3: 3},
        },
        path,
    )
    return path
