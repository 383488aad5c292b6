"""Checkpoints written by ``src/train.py``: read and check one, rebuild its network.

One loader for ``src/eval.py``, ``src/predict.py`` and ``scripts/export.py``. Besides Lightning's
``state_dict`` a checkpoint stores ``run_config`` (the resolved training config, see
``MaskRCNNModule.on_save_checkpoint``), ``class_names`` and ``label_to_category_id``, so the
checkpoint alone is enough to rebuild the model and, for evaluation, the data.
"""

from __future__ import annotations

from maskrcnn.errors import CheckpointError

import copy
from pathlib import Path

import torch
from hydra.utils import instantiate
from torch import nn




def read_run_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict:
    """Load a training checkpoint on the CPU and check it carries what eval / predict need.

    Args:
        path: the checkpoint file.
        key: the config key or option the path came from, for the messages.

    Returns:
        the checkpoint dict: ``state_dict``, ``run_config`` (dict with at least ``model``),
        ``class_names`` (list or None), ``label_to_category_id`` (dict or None), Lightning's keys.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a torch file, or not a checkpoint of ``src/train.py``.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a checkpoint file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"{key}={str(path)!r} {what}")
    try:
        # weights_only=False: Lightning checkpoints hold loop and callback state besides tensors.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...
        raise CheckpointError(
            f"{key}={str(path)!r} is not a PyTorch checkpoint file (torch.load failed: {type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(
            f"{key}={str(path)!r} is a torch file but not a training checkpoint of src/train.py (no 'state_dict'). "
            "To start training from torchvision weights use model.init_from=PATH instead."
        )
    run_config = ckpt.get("run_config")
    if not isinstance(run_config, dict) or not isinstance(run_config.get("model"), dict):
        raise CheckpointError(
            f"{key}={str(path)!r} has no stored run config ('run_config' with a 'model' section); "
            "only checkpoints written by src/train.py can be evaluated or used for prediction"
        )
    return ckpt


def inference_model_config(run_config: dict, mask_format: str | None = None) -> dict:
    """The stored ``model`` config, changed so that building it downloads nothing: no ImageNet
    trunk (``backbone.pretrained=False``) and no ``init_from``; the checkpoint supplies the weights."""
    model_cfg = copy.deepcopy(run_config["model"])
    model_cfg["init_from"] = None
    model_cfg["backbone"] = dict(model_cfg.get("backbone") or {}, pretrained=False)
    if mask_format is not None:
        model_cfg["mask_format"] = mask_format
    return model_cfg


def load_net_state(net: nn.Module, ckpt: dict, path: str | Path, key: str = "ckpt_path") -> None:
    """Copy the checkpoint's ``net.*`` weights into ``net`` strictly.

    Raises:
        CheckpointError: naming the path and the first mismatching keys or shapes (e.g. a
            ``model.*`` override that changes the architecture).
    """
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    if not state:
        raise CheckpointError(f"{key}={str(path)!r}: the checkpoint's state_dict has no 'net.*' weights")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        shown = "\n  ".join(lines[:5]) + (f"\n  ... and {len(lines) - 5} more" if len(lines) > 5 else "")
        raise CheckpointError(
            f"{key}={str(path)!r} does not fit the model built from its stored config and the overrides given "
            f"(an override of model.* that changes the architecture?):\n  {shown}"
        ) from exc


def build_net_from_checkpoint(ckpt: dict, path: str | Path, mask_format: str | None = None) -> nn.Module:
    """The network of ``ckpt`` (from :func:`read_run_checkpoint`), weights loaded, in eval mode."""
    net = instantiate(inference_model_config(ckpt["run_config"], mask_format), _convert_="all")
    load_net_state(net, ckpt, path)
    return net.eval()


def checkpoint_meta(ckpt: dict) -> dict:
    """``{"class_names": [...], "label_to_category_id": {label: category id}}`` (empty when not stored)."""
    return {
        "class_names": list(ckpt.get("class_names") or []),
        "label_to_category_id": {int(k): int(v) for k, v in (ckpt.get("label_to_category_id") or {}).items()},
    }
