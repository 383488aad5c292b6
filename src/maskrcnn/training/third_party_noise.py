"""Silence third-party messages that a user can do nothing about, each at its source.

Every filter names the emitting module (or logger) and the exact message, so anything else from
the same library still shows. Called at the start of ``train`` / ``evaluate`` / ``predict``.
"""

from __future__ import annotations

import logging
import warnings

# (logger name, message prefix) of INFO lines that are advertisements or internal details.
_LOG_LINES = (
    ("pytorch_lightning.utilities.rank_zero", "💡 Tip:"),  # litlogger / litmodels adverts
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip:"),
    ("pytorch_lightning.utilities.rank_zero", "Loading `train_dataloader` to estimate number of stepping batches"),
)


class _DropPrefixes(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def silence_third_party_noise() -> None:
    """Install the filters (idempotent)."""
    # torch 2.14 deprecated LeafSpec; pytorch_lightning's _pytree still builds one per batch.
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"pytorch_lightning\.utilities\._pytree",
    )
    # Lightning warns when an epoch has fewer batches than log_every_n_steps, but it logs every
    # log_every_n_steps optimizer steps across epoch boundaries: short epochs still get their lines.
    warnings.filterwarnings(
        "ignore",
        message=r"The number of training batches \(\d+\) is smaller than the logging interval",
    )
    by_logger: dict[str, tuple[str, ...]] = {}
    for name, prefix in _LOG_LINES:
        by_logger[name] = by_logger.get(name, ()) + (prefix,)
    for name, prefixes in by_logger.items():
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefixes) for f in target.filters):
            target.addFilter(_DropPrefixes(prefixes))
