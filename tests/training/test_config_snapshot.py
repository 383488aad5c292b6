"""Composed configs are pinned: a refactor of conf/ must compose the same values.

Every entry point's default, every experiment and every option of the groups that hold values is
composed with fixed paths, resolved, and compared with ``tests/assets/config_snapshot.json``. After
an INTENDED change, regenerate the file and review its diff:

    UPDATE_CONFIG_SNAPSHOT=1 python -m pytest tests/test_config_snapshot.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers.config import CONF, compose

SNAPSHOT = Path(__file__).resolve().parents[1] / "assets" / "config_snapshot.json"
FOLDER = ["data.root=/DATA/mine", "data.num_classes=2"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def _cases() -> dict[str, tuple[str, list[str]]]:
    cases = {"train (defaults)": ("train", []), "eval (defaults)": ("eval", ["ckpt_path=X.ckpt"])}
    for group in ("experiment", "data", "model", "loss", "optimizer", "scheduler", "trainer", "augmentation"):
        for option in _options(group):
            cases[f"train {group}={option}"] = ("train", [f"{group}={option}", *(FOLDER if option == "folder" else [])])
    for option in _options("tta"):
        cases[f"eval tta={option}"] = ("eval", ["ckpt_path=X.ckpt", f"tta={option}"])
    for data in _options("data"):
        cases[f"train data={data} model=resnet18_fpn"] = (
            "train",
            [f"data={data}", "model=resnet18_fpn", *(FOLDER if data == "folder" else [])],
        )
    return cases


def _composed(config_name: str, overrides: list[str]) -> dict:
    cfg = compose(
        [*overrides, "paths.root_dir=/ROOT", "paths.data_dir=/DATA", "paths.output_dir=/OUT"], config_name=config_name
    )
    return OmegaConf.to_container(cfg, resolve=True)


def test_composed_configs_match_the_snapshot():
    current = {name: _composed(*case) for name, case in _cases().items()}
    if os.environ.get("UPDATE_CONFIG_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        pytest.skip("snapshot written")
    expected = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    assert sorted(current) == sorted(expected), "the set of composed cases changed"
    for name in expected:
        assert current[name] == expected[name], f"{name}: composed config differs from the snapshot"
