"""How the entry points end on an error.

An *expected* error (bad data, a bad config value, a missing input file, an unusable checkpoint,
an offline weight download, a training run stopped by a limit) already carries a message that
names the file, key or id: it is logged as that one message and the program exits with status 1,
with no traceback (Hydra would otherwise print its own). Anything else is a bug and keeps its
full traceback. ``HYDRA_FULL_ERROR=1`` shows the traceback of expected errors too.

    @hydra.main(version_base="1.3", config_path="../conf", config_name="train")
    @exit_on_expected_errors
    def main(cfg): ...

The decorator sits under ``@hydra.main`` so that it runs inside Hydra's job (the message lands
in the run directory's log). DDP processes started by Lightning re-run the same script, so every
rank ends the same way; ranks other than 0 prefix their message with their rank.

The decorator also closes the W&B run the entry point opened (exit code 0, or 1 on an error):
left open, it is closed at interpreter exit by wandb's service process, which writes its closing
lines with colour codes even into a redirected log.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar, cast

from hydra.errors import InstantiationException

from maskrcnn.errors import EXPECTED_ERRORS

log = logging.getLogger("maskrcnn")

F = TypeVar("F", bound=Callable)


def expected_error_types() -> tuple[type[BaseException], ...]:
    """The errors whose message is enough: ours (``maskrcnn.errors``) and a missing path the user gave
    (``ckpt_path``, ``input``, ``data.*``; our messages name the key)."""
    return (*EXPECTED_ERRORS, FileNotFoundError)


def expected_error(exc: BaseException | None) -> BaseException | None:
    """``exc`` itself if expected, or the expected error that Hydra's ``instantiate`` wrapped
    (``InstantiationException: Error in call to target ...`` raised ``from`` it), or the one a
    DDP-spawn worker raised (``ProcessRaisedException``, which only carries its traceback as
    text); else None."""
    expected, seen = expected_error_types(), set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, expected):
            return exc
        if type(exc).__name__ == "ProcessRaisedException":
            return _from_traceback_text(str(exc), expected)
        if not isinstance(exc, InstantiationException):
            return None
        exc = exc.__cause__
    return None


def _from_traceback_text(text: str, expected: tuple[type[BaseException], ...]) -> BaseException | None:
    """The expected error a formatted traceback ends with ("pkg.module.DatasetError: message"), rebuilt."""
    found, where = None, -1
    for cls in expected:
        marker = f"{cls.__module__}.{cls.__qualname__}: " if cls.__module__ != "builtins" else f"{cls.__name__}: "
        at = text.rfind("\n" + marker)
        if at > where:
            found, where = cls(text[at + 1 + len(marker) :].strip()), at
    return found


def error_message(exc: BaseException) -> str:
    """The message to show. An error re-raised by a DataLoader worker carries the worker's whole
    traceback in its text ("Caught DatasetError in DataLoader worker process 0. Original Traceback
    ..."); keep only the original message."""
    text = str(exc)
    if "\nOriginal Traceback" in text:
        marker = f"{type(exc).__module__}.{type(exc).__qualname__}: "
        cut = text.rfind(marker)
        text = text[cut + len(marker) :] if cut >= 0 else text
    return f"{type(exc).__name__}: {text.strip()}"


def _rank() -> int:
    """This process's global rank: Lightning's once it set one up, else the launcher's RANK."""
    if "lightning_fabric" in sys.modules:
        from lightning_fabric.utilities.rank_zero import rank_zero_only

        rank = getattr(rank_zero_only, "rank", 0)
        if rank:
            return int(rank)
    return int(os.environ.get("RANK", 0) or 0)


def report_and_exit(exc: BaseException) -> None:
    """Log the one-message form of an expected error and exit with status 1."""
    rank = _rank()
    message = ("" if rank == 0 else f"[rank {rank}] ") + error_message(exc)
    if logging.getLogger().handlers:  # Hydra configured logging: console and <run dir>/<task>.log
        log.error(message)
    else:  # a plain script
        print(message, file=sys.stderr)
    sys.exit(1)


def finish_wandb_run(exit_code: int) -> None:
    """Close the open W&B run, if wandb was imported and one is open (otherwise do nothing)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


def exit_on_expected_errors(fn: F) -> F:
    """Decorate an entry point: expected errors end the program with one message and status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            finish_wandb_run(exit_code=1)
            expected = expected_error(exc)
            if expected is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            report_and_exit(expected)
        finish_wandb_run(exit_code=0)
        return result

    return cast(F, wrapper)
