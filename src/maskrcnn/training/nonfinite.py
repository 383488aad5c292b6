"""Limit on training steps skipped for a non-finite loss (``nonfinite_loss=skip``).

Skipping a rare NaN step is harmless; a run that skips most of its steps is not training, yet
it would end with exit status 0 and an AP table. :class:`SkipLimit` stops such a run once more
than ``max_fraction`` of the last ``window`` training steps were skipped (and at least
``min_skipped`` of them, so that one early NaN does not end a run).
"""

from __future__ import annotations

from collections import deque

from maskrcnn.errors import NonFiniteLossError


class SkipLimit:
    """Counts skipped and total training steps and enforces the skip limit.

    Args:
        max_fraction: the largest tolerated share of skipped steps among the last ``window``
            steps, in [0, 1]; 1.0 never stops.
        window: number of recent steps the share is computed over.
        min_skipped: skipped steps (within the window) needed before the limit can stop the run.
    """

    def __init__(self, max_fraction: float = 0.2, window: int = 100, min_skipped: int = 5) -> None:
        if not 0.0 <= float(max_fraction) <= 1.0:
            raise ValueError(f"nonfinite_max_skip_fraction must be in [0, 1], got {max_fraction!r}")
        if int(window) < 1 or int(min_skipped) < 1:
            raise ValueError(
                f"nonfinite_skip_window and nonfinite_min_skipped must be >= 1, got {window!r} and {min_skipped!r}"
            )
        self.max_fraction, self.window, self.min_skipped = float(max_fraction), int(window), int(min_skipped)
        self.recent: deque[bool] = deque(maxlen=self.window)
        self.total_steps = 0
        self.total_skipped = 0

    def record(self, skipped: bool, where: str = "") -> None:
        """Count one training step.

        Raises:
            NonFiniteLossError: the limit is exceeded; names the counts and the keys to change.
        """
        self.recent.append(bool(skipped))
        self.total_steps += 1
        self.total_skipped += int(skipped)
        recent_skipped = sum(self.recent)
        if recent_skipped < self.min_skipped or recent_skipped <= self.max_fraction * len(self.recent):
            return
        raise NonFiniteLossError(
            f"nonfinite_loss=skip: {recent_skipped} of the last {len(self.recent)} training steps had a non-finite "
            f"loss ({self.total_skipped} of {self.total_steps} in this run){' at ' + where if where else ''}, more "
            f"than nonfinite_max_skip_fraction={self.max_fraction:g} of the last nonfinite_skip_window="
            f"{self.window} steps: the run is not training. Lower optimizer.lr_per_16_images, raise "
            "scheduler.warmup_steps, set trainer.gradient_clip_val, check the data (browse_dataset.py), or "
            "raise nonfinite_max_skip_fraction (1.0 never stops)."
        )

    def summary(self) -> str:
        """One line for the end of training."""
        share = 100.0 * self.total_skipped / self.total_steps if self.total_steps else 0.0
        return (
            f"nonfinite_loss=skip: skipped {self.total_skipped} of {self.total_steps} training steps "
            f"({share:.1f}%) for a non-finite loss"
        )
