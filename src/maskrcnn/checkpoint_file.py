"""The one checked ``torch.load`` for every checkpoint a user names (``ckpt_path``, ``model.init_from``,
``--ckpt``), and the one check that its weights fit a network.

A file that cannot be used ends in a :class:`CheckpointError` whose one-line message names the option,
the path and the cause: missing, a directory or other non-file, empty, a text file, truncated or
damaged, not a PyTorch file, or (:func:`check_state_fits`) weights of another ``num_classes`` (both
numbers) or another architecture (the first mismatching layers). No other module calls ``torch.load``
on a user's path.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from maskrcnn.errors import CheckpointError
from maskrcnn.file_kinds import path_problem

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
PICKLE_MAGIC = b"\x80"  # torch.save's legacy format starts with a pickle protocol opcode

# Layers whose first dimension is the number of class outputs (background included).
CLASS_LAYERS = (
    "roi_heads.box_predictor.cls_score.weight",
    "roi_heads.mask_predictor.mask_fcn_logits.weight",
)


def describe_path(path: Path) -> str | None:
    """Why ``path`` is not a regular file one can read (``maskrcnn.file_kinds.path_problem``), or None."""
    problem = path_problem(path)
    return "is a directory, not a checkpoint file" if problem == "is a directory" else problem


def _head(path: Path, size: int = 512) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def _short(exc: BaseException) -> str:
    """The exception's first sentence, as one line of at most 160 characters."""
    return " ".join(f"{type(exc).__name__}: {str(exc).split('. ')[0]}".split())[:160]


def load_checkpoint_file(path: str | Path, key: str, weights_only: bool = False) -> object:
    """``torch.load(path)`` on the CPU, every failure turned into one :class:`CheckpointError`.

    Args:
        path: the file the user named.
        key: the option it came from (``ckpt_path``, ``model.init_from``, ``--ckpt``), for the message.
        weights_only: passed to ``torch.load`` (False for Lightning checkpoints, which hold loop state).

    Raises:
        CheckpointError: "<key>='<path>' <cause>"; the cause says what the file is.
    """
    path = Path(path)
    where = f"{key}={str(path)!r}"
    problem = describe_path(path)
    if problem is not None:
        raise CheckpointError(f"{where} {problem}")
    try:
        size, head = path.stat().st_size, _head(path)
    except OSError as exc:
        raise CheckpointError(f"{where} cannot be read ({exc.strerror or exc})") from exc
    if size == 0:
        raise CheckpointError(f"{where} is empty (0 bytes), not a checkpoint")
    if not head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        what = "a text file" if _looks_like_text(head) else "not a PyTorch file (unknown format)"
        raise CheckpointError(f"{where} is {what}, not a checkpoint written by torch.save")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as exc:
        if weights_only and "Weights only load failed" in str(exc):
            raise CheckpointError(
                f"{where} holds Python objects besides tensors (a training checkpoint? resume it with ckpt_path=); "
                f"{key} takes a plain state_dict"
            ) from exc
        raise CheckpointError(
            f"{where} is truncated or damaged ({size} bytes; torch.load failed: "
            f"{_short(exc)}); use an earlier checkpoint or copy the file again"
        ) from exc
    except Exception as exc:  # RuntimeError (zip), EOFError / UnpicklingError (pickle), OSError, ...
        raise CheckpointError(
            f"{where} is truncated or damaged ({size} bytes; torch.load failed: {_short(exc)}); "
            "use an earlier checkpoint or copy the file again"
        ) from exc


def classes_of(state: Mapping[str, Tensor], prefix: str = "") -> int | None:
    """The foreground class count a state dict was built for (class outputs - background), if it says."""
    for name in CLASS_LAYERS:
        tensor = state.get(prefix + name)
        if isinstance(tensor, Tensor) and tensor.dim() >= 1:
            return int(tensor.shape[0]) - 1
    return None


def check_state_fits(
    net: nn.Module, state: Mapping[str, Tensor], where: str, built_for: str = "", ignore: tuple[str, ...] = ()
) -> None:
    """Raise when ``state`` (``net``'s key names) cannot be loaded into ``net`` strictly.

    Args:
        net: the network this run built.
        state: the checkpoint's weights under ``net``'s names.
        where: "<key>='<path>'" for the message.
        built_for: what this run's network is built from, e.g. "data.num_classes=5"; default
            "num_classes=<n>".
        ignore: key prefixes that may differ (layers that are re-initialised).

    Raises:
        CheckpointError: for another class count, naming both numbers; otherwise naming the first
            missing, unexpected or mismatching layers.
    """
    own = net.state_dict()
    theirs, ours = classes_of(state), classes_of(own)
    classes_ignored = bool(ignore) and any(name.startswith(ignore) for name in CLASS_LAYERS)
    if theirs is not None and ours is not None and theirs != ours and not classes_ignored:
        this_run = built_for or f"num_classes={ours}"
        raise CheckpointError(
            f"{where} was trained for num_classes={theirs}, but this run has {this_run} ({ours} classes); "
            "use a checkpoint of this dataset, or set data.num_classes to the checkpoint's"
        )
    problems = []
    for name, tensor in own.items():
        if name.startswith(ignore) or name.endswith("num_batches_tracked"):
            continue
        if name not in state:
            problems.append(f"missing {name}")
        elif tuple(state[name].shape) != tuple(tensor.shape):
            problems.append(f"{name} is {list(state[name].shape)} in the checkpoint, {list(tensor.shape)} here")
    problems += [
        f"unexpected {name}"
        for name in state
        if name not in own and not name.startswith(ignore) and not name.endswith("num_batches_tracked")
    ]
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise CheckpointError(f"{where} was built for another architecture than this run's model: {shown}")
