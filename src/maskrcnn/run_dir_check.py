"""A Hydra callback that ends a run with one line when Hydra could not create its run directory.

Hydra creates ``hydra.run.dir`` (``hydra.sweep.dir`` for ``--multirun``) before the task function
runs, so an unusable directory (an existing file, a path through a file, a read-only file system)
would end in Hydra's traceback. :class:`RunDirCheck` looks at the path first, creating nothing, and
ends the program with one ``ConfigError`` line and exit status 1 (``HYDRA_FULL_ERROR=1`` raises
instead). Registered in ``conf/hydra/default.yaml``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def run_dir_problem(path: str | Path) -> str | None:
    """Why the directory ``path`` cannot be created and written, or None when it can. Checked on the
    path or its first existing ancestor with a probe directory that is removed at once."""
    path = Path(path).absolute()
    try:
        if (path.exists() or path.is_symlink()) and not path.is_dir():
            return "is an existing file, not a directory"
        ancestor = path
        while not ancestor.exists():
            ancestor = ancestor.parent
    except OSError as exc:  # ENAMETOOLONG, ELOOP, EACCES
        return f"cannot be used ({exc.strerror or exc})"
    if not ancestor.is_dir():
        return f"cannot be created: {str(ancestor)!r} is a file, not a directory"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".run-dir-probe-", dir=ancestor))
    except OSError as exc:
        where = "" if ancestor == path else f" in {str(ancestor)!r}"
        return f"cannot be written{where} ({exc.strerror or exc})"
    return None


class RunDirCheck(Callback):
    """Checks ``hydra.run.dir`` / ``hydra.sweep.dir`` before Hydra creates it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check(config, "hydra.sweep.dir")


def _check(config: DictConfig, key: str) -> None:
    section, _, leaf = key.rpartition(".")
    try:
        path = str(config.hydra[section.split(".")[1]][leaf])
    except Exception:  # noqa: BLE001  an interpolation only Hydra's job can resolve: Hydra reports it itself
        return
    problem = run_dir_problem(path)
    if problem is None:
        return
    message = f"ConfigError: {key}={path!r} {problem}; choose another {key}"
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise NotADirectoryError(message)
    print(message, file=sys.stderr)
    sys.exit(1)
