"""Checks of predict's config values (``conf/predict.yaml``), run before anything is read or loaded.

A bad value gets a one-line :class:`~maskrcnn.errors.ConfigError` naming the key and
the value (``src/predict.py`` prints it without a traceback), instead of a torch error deep inside
the model or a silently odd run (``batch_size=0`` would put every image in one batch).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from omegaconf import DictConfig, OmegaConf

from maskrcnn.errors import ConfigError
from maskrcnn.inference.slice_options import SliceOptions, slice_options
from maskrcnn.inference.tta_options import TTASettings, check_tta_config, check_tta_without_slicing

DEVICES = "auto, cpu, cuda, cuda:N or mps"


@dataclass
class PredictOptions:
    """The checked values: ``device`` resolved (``auto`` -> ``cuda`` when available, else ``cpu``)."""

    device: torch.device
    batch_size: int
    score_thresh: float
    strict: bool
    inference_options: dict | None
    tta: TTASettings
    slicing: SliceOptions | None = None  # inference.slice; None: plain inference


def check_device(value: object) -> torch.device:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` -> a device this machine has.

    Raises:
        ConfigError: a malformed string, another device type, or a device that is not available.
    """
    if value is None or value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(value) if isinstance(value, str) else None
    except RuntimeError:  # torch: "Invalid device string", "Expected one of cpu, cuda, ..."
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device={value!r} is not a device predict can use ({DEVICES})")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = "built without CUDA" if torch.version.cuda is None else "no usable CUDA GPU found"
            raise ConfigError(
                f"device={value!r} but CUDA is not available here "
                f"(PyTorch {torch.__version__}, {built}); use device=cpu or device=auto"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"device={value!r} but this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={value!r} but MPS (Apple GPU) is not available here; use device=cpu or device=auto")
    return device


def check_output(value: object) -> Path:
    """Create the output folder (and its parents).

    Raises:
        ConfigError: unset, an existing file, or a folder that cannot be created (the OS reason).
    """
    if value is None or isinstance(value, bool) or str(value) == "":
        raise ConfigError(f"output={value!r} must be a folder path")
    out_dir = Path(str(value))  # Hydra reads output=2024 as an int
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output={value!r} is an existing file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent that is a file, no permission, read-only file system, ...
        raise ConfigError(f"output={value!r}: cannot create the folder: {exc.strerror or exc}") from exc
    return out_dir


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _inference_options(cfg: DictConfig) -> dict | None:
    """``inference.options`` (conf/inference/{eager,fast}.yaml): null, or known flags set to true / false."""
    options = (cfg.get("inference") or {}).get("options")
    if options is None:
        return None
    from maskrcnn.inference.optimize.fast_inference import optimize_for_inference

    known = [name for name in inspect.signature(optimize_for_inference).parameters if name != "net"]
    options = cast(dict, OmegaConf.to_container(options)) if OmegaConf.is_config(options) else dict(options)
    for key, flag in options.items():
        if key not in known:
            raise ConfigError(f"inference.options.{key} is not an option (known: {', '.join(known)})")
        if not isinstance(flag, bool):
            raise ConfigError(f"inference.options.{key}={flag!r} must be true or false")
    return options


def check_predict_config(cfg: DictConfig) -> PredictOptions:
    """All of predict's values except ``input`` / ``output`` (checked when listed / created).

    Raises:
        ConfigError: naming the key and the value.
    """
    for key in ("ckpt_path", "input"):
        if key not in cfg or OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
            raise ConfigError(f"{key} must be set (python src/predict.py ckpt_path=PATH input=DIR_OR_GLOB output=DIR)")
    batch_size = cfg.get("batch_size", 2)
    if isinstance(batch_size, float) and batch_size.is_integer():
        batch_size = int(batch_size)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be a positive integer")
    score_thresh = cfg.get("score_thresh", 0.5)
    if not _number(score_thresh) or not 0.0 <= score_thresh <= 1.0:
        raise ConfigError(f"score_thresh={score_thresh!r} must be a number in [0, 1]")
    strict = cfg.get("strict", False)
    if not isinstance(strict, bool):
        raise ConfigError(f"strict={strict!r} must be true or false")
    tta = check_tta_config(cfg.get("tta"))
    slicing = slice_options((cfg.get("inference") or {}).get("slice"))
    check_tta_without_slicing(tta, slicing)
    return PredictOptions(
        device=check_device(cfg.get("device", "auto")),
        batch_size=batch_size,
        score_thresh=float(score_thresh),
        strict=strict,
        inference_options=_inference_options(cfg),
        tta=tta,
        slicing=slicing,
    )
