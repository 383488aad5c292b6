"""Checkpoints written by ``src/train.py``: read and check one, rebuild its network.

One loader for ``src/eval.py``, ``src/predict.py`` and ``scripts/export.py``. Besides Lightning's
``state_dict`` a checkpoint stores ``run_config`` (the resolved training config, see
``MaskRCNNModule.on_save_checkpoint``), ``class_names`` and ``label_to_category_id``, so the
checkpoint alone is enough to rebuild the model and, for evaluation, the data.
"""

from __future__ import annotations

import copy
from pathlib import Path

from hydra.utils import instantiate
from torch import nn

from maskrcnn.checkpoint_file import check_state_fits, load_checkpoint_file
from maskrcnn.errors import CheckpointError, ConfigError
from maskrcnn.file_kinds import is_missing


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
        CheckpointError: not a file, empty, text, truncated, not a torch file
            (:func:`maskrcnn.checkpoint_file.load_checkpoint_file`), or not a checkpoint of ``src/train.py``.
    """
    path = Path(path)
    if is_missing(path):
        raise FileNotFoundError(f"{key}={str(path)!r} does not exist")
    # weights_only=False: Lightning checkpoints hold loop and callback state besides tensors.
    ckpt = load_checkpoint_file(path, key, weights_only=False)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(
            f"{key}={str(path)!r} is a torch file but not a training checkpoint of src/train.py (no 'state_dict'; "
            "from another project?). To start training from torchvision weights use model.init_from=PATH instead."
        )
    run_config = ckpt.get("run_config")
    if not isinstance(run_config, dict) or not isinstance(run_config.get("model"), dict):
        raise CheckpointError(
            f"{key}={str(path)!r} has no stored run config ('run_config' with a 'model' section; from another "
            "project?): only checkpoints written by src/train.py can be resumed, evaluated or used for prediction"
        )
    return ckpt


def net_state(ckpt: dict, path: str | Path, key: str = "ckpt_path") -> dict:
    """The checkpoint's ``net.*`` weights under the network's own names.

    Raises:
        CheckpointError: the state_dict has no ``net.*`` weights.
    """
    state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    if not state:
        raise CheckpointError(
            f"{key}={str(path)!r}: the checkpoint's state_dict has no 'net.*' weights (from another project?)"
        )
    return state


def inference_model_config(run_config: dict, mask_format: str | None = None) -> dict:
    """The stored ``model`` config, changed so that building it downloads nothing: no ImageNet
    trunk (``backbone.pretrained=False``) and no ``init_from``; the checkpoint supplies the weights."""
    model_cfg = copy.deepcopy(run_config["model"])
    model_cfg["init_from"] = None
    model_cfg["backbone"] = dict(model_cfg.get("backbone") or {}, pretrained=False)
    if mask_format is not None:
        model_cfg["mask_format"] = mask_format
    return model_cfg


def load_net_state(net: nn.Module, ckpt: dict, path: str | Path, key: str = "ckpt_path", built_for: str = "") -> None:
    """Copy the checkpoint's ``net.*`` weights into ``net`` strictly.

    Raises:
        CheckpointError: naming the path and, for another class count, both numbers
            (:func:`maskrcnn.checkpoint_file.check_state_fits`), else the first mismatching layers
            (e.g. a ``model.*`` override that changes the architecture).
    """
    state = net_state(ckpt, path, key)
    check_state_fits(net, state, f"{key}={str(path)!r}", built_for=built_for)
    net.load_state_dict(state, strict=True)


def check_resume_checkpoint(path: str | Path, net: nn.Module, num_classes: int, key: str = "ckpt_path") -> None:
    """Check, before ``trainer.fit(ckpt_path=path)``, that ``path`` is a training checkpoint with the
    state a resume needs and weights that fit ``net`` (built for ``data.num_classes=num_classes``).

    Raises:
        CheckpointError: one line naming the path and the cause.
    """
    ckpt = read_run_checkpoint(path, key)
    missing = [k for k in ("optimizer_states", "loops", "epoch", "global_step") if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{key}={str(path)!r} holds weights but no training state to resume ({', '.join(missing)} missing); "
            "evaluate it with src/eval.py, or start a new run without ckpt_path"
        )
    check_state_fits(
        net, net_state(ckpt, path, key), f"{key}={str(path)!r}", built_for=f"data.num_classes={num_classes}"
    )


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


NAMED_CHECKPOINTS = {"last": "last.ckpt", "best": "best.ckpt"}  # ckpt_path=last|best, in <run>/checkpoints/


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """``"last"`` / ``"best"`` mean ``<output_dir>/checkpoints/last.ckpt`` / ``best.ckpt``; any path must exist.

    Raises:
        ConfigError: naming the value and the missing file.
    """
    if ckpt_path in (None, ""):
        return None
    named = NAMED_CHECKPOINTS.get(str(ckpt_path))
    path = Path(output_dir) / "checkpoints" / named if named else Path(ckpt_path)
    if is_missing(path):  # anything else wrong with it, the checked loader says
        hint = " (run again with hydra.run.dir=<the earlier run's directory>)" if named else ""
        raise ConfigError(f"ckpt_path={ckpt_path!r}: checkpoint file {path} does not exist{hint}")
    return str(path)


def describe_checkpoint(path: str | Path, ckpt: dict | None = None) -> str:
    """``checkpoints/best.ckpt (epoch 3, step 120, val/segm_AP 0.4312)``: the file and where in training it was written.

    A checkpoint of a run with ``callbacks=ema`` also says which weights its ``state_dict`` holds
    (``EMA weights, decay 0.999, 120 updates``), i.e. the weights eval, predict and export use.
    ``ckpt`` is the loaded dict when the caller has it; otherwise only the path is described.
    """
    path = Path(path)
    shown = f"{path.parent.name}/{path.name}" if path.parent.name == "checkpoints" else str(path)
    if not isinstance(ckpt, dict) or "global_step" not in ckpt:
        return shown
    parts = [f"epoch {ckpt.get('epoch', '?')}", f"step {ckpt['global_step']}"]
    for state in (ckpt.get("callbacks") or {}).values():
        score = state.get("best_model_score") if isinstance(state, dict) else None
        if state.get("best_model_path") and Path(state["best_model_path"]).name == path.name and score is not None:
            parts.append(f"{state.get('monitor')} {float(score):.4f}")
            break
    ema = ckpt.get("ema")
    if isinstance(ema, dict) and ema.get("updates"):
        parts.append(f"EMA weights, decay {ema.get('decay')}, {ema['updates']} updates")
    elif isinstance(ema, dict):
        parts.append(f"raw weights, EMA starts at step {ema.get('update_starting_at_step')}")
    return f"{shown} ({', '.join(parts)})"
