"""Logger factories that need more than a ``_target_``."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.loggers.utilities import _scan_checkpoints
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor

log = logging.getLogger(__name__)


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def metric_alias(monitor: str | None, score: float | Tensor | None) -> str | None:
    """Artifact alias naming the monitored metric's value: ``val/segm_AP``, 0.43121 -> ``segmAP-0.4312``."""
    if not monitor or score is None:
        return None
    value = float(score)
    return f"{monitor.rsplit('/', 1)[-1].replace('_', '')}-{value:.4f}"


class CheckpointArtifactWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` whose checkpoint artifacts carry the monitored metric in an alias.

    ``log_model``: False (no artifacts), True (the kept checkpoints, once training succeeded) or
    "all" (every checkpoint as it is written). Each checkpoint becomes a version of the artifact
    ``model-<run id>``. The monitored (top-k) checkpoints get the alias ``<metric>-<value>`` (e.g.
    ``segmAP-0.4312``), the best one also ``best``; the most recently logged one holds ``latest``
    (last.ckpt at the end of training). Metadata: score, monitor and the ModelCheckpoint settings.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Lightning always passes anonymous=None to wandb.init, and wandb >= 0.19 warns "The
        # anonymous setting has no effect" for any value given; not passing it removes the warning.
        self._wandb_init.pop("anonymous", None)
        self._artifact_callbacks: dict[int, ModelCheckpoint] = {}
        self._artifact_times: dict[str, float] = {}

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        if self._log_model == "all" or (self._log_model is True and checkpoint_callback.save_top_k == -1):
            self._log_checkpoint_artifacts(checkpoint_callback)
        elif self._log_model is True:
            self._artifact_callbacks[id(checkpoint_callback)] = checkpoint_callback

    @rank_zero_only
    def finalize(self, status: str) -> None:
        # Like Lightning: checkpoints of a failed run are not uploaded.
        if status == "success" and self._experiment is not None:
            for checkpoint_callback in self._artifact_callbacks.values():
                self._log_checkpoint_artifacts(checkpoint_callback)

    def _log_checkpoint_artifacts(self, checkpoint_callback: ModelCheckpoint) -> None:
        import wandb

        monitor = getattr(checkpoint_callback, "monitor", None)
        settings = {
            k: getattr(checkpoint_callback, k)
            for k in ("monitor", "mode", "save_last", "save_top_k")
            if hasattr(checkpoint_callback, k)
        }
        for mtime, path, score, tag in _scan_checkpoints(checkpoint_callback, self._artifact_times):
            value = float(score) if isinstance(score, (Tensor, float, int)) else None
            metadata = {
                "score": value,
                "monitor": monitor,
                "original_filename": Path(path).name,
                "ModelCheckpoint": settings,
            }
            artifact = wandb.Artifact(name=f"model-{self.experiment.id}", type="model", metadata=metadata)
            artifact.add_file(path, name="model.ckpt", policy=self.add_file_policy)
            aliases = ["latest"]
            if path == checkpoint_callback.best_model_path and monitor is not None:
                aliases.append("best")  # not last.ckpt's LastCheckpoint: its "best" path is its newest file
            # The metric alias goes to the monitored (top-k) files only: last.ckpt often has the
            # best file's score, and an alias names one version, so it would move off the best.
            alias = metric_alias(monitor, value) if tag != "latest" else None
            if alias is not None:
                aliases.append(alias)
            self.experiment.log_artifact(artifact, aliases=aliases)
            self._artifact_times[path] = mtime


def build_wandb_logger(
    project: str,
    save_dir: str,
    name: str | None = None,
    mode: str = "auto",
    log_model: bool | str = False,
    **kwargs: Any,
) -> WandbLogger:
    """A W&B logger that works without an account.

    Args:
        mode: "auto" (online if logged in, else offline), "online", "offline" or "disabled".
            The ``WANDB_MODE`` environment variable, when set, always wins.
        log_model: False, True or "all": checkpoints as W&B artifacts (see
            ``CheckpointArtifactWandbLogger``). Offline they are kept with the run and uploaded
            by ``wandb sync``.
    """
    if mode not in ("auto", "online", "offline", "disabled"):
        raise ValueError(f"logger.wandb.mode must be auto|online|offline|disabled, got {mode!r}")
    if log_model not in (False, True, "all"):
        raise ValueError(f"logger.wandb.log_model must be false, true or 'all', got {log_model!r}")
    resolved = os.environ.get("WANDB_MODE") or (
        ("online" if _wandb_logged_in() else "offline") if mode == "auto" else mode
    )
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    import wandb

    if wandb.run is not None:
        # The run of an earlier train()/evaluate() in this process (a Hydra multirun trial, a test)
        # is still open, and Lightning would log this run into it: close it first.
        wandb.finish()
    if resolved == "offline":
        log.info(
            "W&B runs offline in %s/wandb; upload later with `wandb sync %s/wandb/offline-run-*`", save_dir, save_dir
        )
    return CheckpointArtifactWandbLogger(
        project=project, name=name, save_dir=save_dir, mode=resolved, log_model=log_model, **kwargs
    )
