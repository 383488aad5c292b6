"""Run the project's commands from tests: import a file under scripts/ as a module, or run an entry point
in a subprocess as a user would."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from types import ModuleType

from helpers.config import ROOT


def load_script(name: str) -> ModuleType:
    """``load_script("export")`` -> the module of ``scripts/export.py`` (its ``main`` not run)."""
    path = ROOT / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_entry_point(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python <script> <args>`` from the repository root, as a user runs it: output captured, W&B
    offline, and without ``HYDRA_FULL_ERROR`` (the tests' default), so expected errors print one line."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    env["WANDB_MODE"] = "offline"
    return subprocess.run(
        [sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
