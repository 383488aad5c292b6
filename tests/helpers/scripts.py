"""Import a file under scripts/ as a module (scripts/ is not a package and stays off sys.path)."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from helpers.config import ROOT


def load_script(name: str) -> ModuleType:
    """``load_script("export")`` -> the module of ``scripts/export.py`` (its ``main`` not run)."""
    path = ROOT / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
