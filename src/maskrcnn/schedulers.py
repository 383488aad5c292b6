"""Step-based learning-rate schedules with linear warm-up.

The schedules are built once the total number of optimizer steps is known
(``trainer.estimated_stepping_batches``), so milestones are given as *fractions* of training:
the "1x" and "3x" recipes differ only in the number of epochs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _warmup(step: int, warmup_steps: int, warmup_factor: float) -> float:
    if step >= warmup_steps:
        return 1.0
    alpha = step / max(1, warmup_steps)
    return warmup_factor * (1.0 - alpha) + alpha


def warmup_multistep(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int = 1000,
    warmup_factor: float = 0.001,
    milestones: Sequence[float] = (0.6667, 0.8889),
    gamma: float = 0.1,
) -> LambdaLR:
    """Linear warm-up from ``warmup_factor * lr``, then multiply by ``gamma`` at each milestone.

    Args:
        total_steps: optimizer steps of the whole run.
        milestones: fractions of ``total_steps`` in (0, 1].
    """
    for m in milestones:
        if not 0.0 < m <= 1.0:
            raise ValueError(f"scheduler.milestones must be fractions in (0, 1], got {list(milestones)}")
    # Warm-up never runs longer than the run itself (tiny debug runs).
    warmup_steps = min(warmup_steps, total_steps)
    steps = sorted(int(round(m * total_steps)) for m in milestones)

    def factor(step: int) -> float:
        decays = sum(step >= s for s in steps)
        return _warmup(step, warmup_steps, warmup_factor) * gamma**decays

    return LambdaLR(optimizer, factor)


def warmup_cosine(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int = 1000,
    warmup_factor: float = 0.001,
    final_factor: float = 0.0,
) -> LambdaLR:
    """Linear warm-up, then half a cosine from ``lr`` down to ``final_factor * lr`` at ``total_steps``."""
    warmup_steps = min(warmup_steps, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return _warmup(step, warmup_steps, warmup_factor)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
