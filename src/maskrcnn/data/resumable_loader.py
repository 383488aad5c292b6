"""A training DataLoader that resumes mid-epoch at the next batch, neither replaying nor skipping any.

Lightning stores the ``state_dict`` of every training dataloader that has one in its checkpoints
(``loops.fit_loop.state_dict.combined_loader``) and, when a run resumes from a checkpoint written
mid-epoch, calls ``load_state_dict`` before it iterates again. Without it Lightning restarts the
epoch's batches from the first one while counting the epoch as partly done, so the batches before
the checkpoint are trained twice and the rest of the epoch never.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader


class ResumableDataLoader(DataLoader):
    """``DataLoader`` whose state is the number of batches of the current epoch handed out so far.

    Its ``batch_sampler`` must have a ``skip_batches`` attribute (``GroupedBatchSampler``): after
    ``load_state_dict`` the next iteration draws the epoch's batch order as usual (same sampler
    epoch) and starts after the batches already trained; the following iterations are whole epochs.
    Lightning's fetcher does not read ahead from a loader with a length, so the batches handed out
    are the batches trained.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resume_after = 0  # batches to leave out at the start of the next iteration
        self._handed_out = 0

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]  # a generator over the parent's iterator
        skip, self._resume_after = self._resume_after, 0
        self.batch_sampler.skip_batches = skip  # type: ignore[union-attr]  # a GroupedBatchSampler, set by the data module
        self._handed_out = skip
        for batch in super().__iter__():
            self._handed_out += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"batches_done": self._handed_out}

    def load_state_dict(self, state: dict[str, int]) -> None:
        done = int(state.get("batches_done", 0))
        self._resume_after = done if 0 < done < len(self) else 0  # a finished epoch resumes with a new one


class TrainPosition:
    """The data module's copy of the training loader's position (its ``state_dict`` / ``load_state_dict``).

    Lightning also stores the loader's own state, but restores it only when nothing built the
    training loader before the checkpoint was read (``trainer.estimated_stepping_batches`` does, for
    the LR schedule); this copy is restored in every case, before the first resumed batch.
    """

    def __init__(self) -> None:
        self.loader: ResumableDataLoader | None = None
        self.pending: dict[str, int] | None = None  # read from a checkpoint, for the next loader

    def attach(self, loader: ResumableDataLoader) -> ResumableDataLoader:
        self.loader = loader
        self.load_state_dict({"train_loader": self.pending} if self.pending else {})
        return loader

    def state_dict(self) -> dict[str, Any]:
        return {"train_loader": self.loader.state_dict()} if self.loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pending = state_dict.get("train_loader")
        if self.loader is not None and self.pending:
            self.loader.load_state_dict(self.pending)
            self.pending = None
