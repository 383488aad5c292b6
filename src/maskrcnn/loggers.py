"""Logger factories that need more than a ``_target_``."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

from pytorch_lightning.loggers import WandbLogger

log = logging.getLogger(__name__)


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def build_wandb_logger(
    project: str,
    save_dir: str,
    name: str | None = None,
    mode: str = "auto",
    log_model: bool = False,
    **kwargs,
) -> WandbLogger:
    """A W&B logger that works without an account.

    Args:
        mode: "auto" (online if logged in, else offline), "online", "offline" or "disabled".
            The ``WANDB_MODE`` environment variable, when set, always wins.
    """
    if mode not in ("auto", "online", "offline", "disabled"):
        raise ValueError(f"logger.wandb.mode must be auto|online|offline|disabled, got {mode!r}")
    resolved = os.environ.get("WANDB_MODE") or (
        ("online" if _wandb_logged_in() else "offline") if mode == "auto" else mode
    )
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if resolved == "offline":
        log.info("W&B runs offline in %s/wandb; upload later with `wandb sync %s/wandb/offline-run-*`", save_dir, save_dir)
    return WandbLogger(
        project=project, name=name, save_dir=save_dir, mode=resolved, log_model=log_model, **kwargs
    )
