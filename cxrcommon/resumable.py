"""A training DataLoader that Lightning resumes mid-epoch where the stopped run left off.

torch's shuffling and `WeightedRandomSampler` draw from the global RNG, which a checkpoint does
not hold, so a run resumed mid-epoch re-draws an epoch from scratch: with the same seed it trains
again on the very batches it saw before the stop (what a 2-core CPU run stopped by ``max_time``
and resumed would do), with another seed it skips the rest of the epoch's draw. Here the order of
an epoch is a pure function of (seed, epoch), and the loader implements Lightning's loader state
protocol (``state_dict`` / ``load_state_dict``, saved in the checkpoint's loop state), so a resumed
run skips exactly the batches the stopped run trained and goes on with the same order.

The state is the trainer's count of processed batches, not of batches the loader has handed out:
Lightning fetches a batch ahead and worker processes prefetch more, so the loader cannot know
which of its batches were trained. Per-sample randomness drawn inside the dataset (augmentation)
is not part of the state.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochSampler(Sampler[int]):
    """Indices of one epoch in an order fixed by (``seed``, epoch): a permutation, or with
    ``weights`` ``len(weights)`` draws with replacement in proportion to them. Lightning calls
    ``set_epoch`` at each epoch start; `resume_at` skips the first indices of one epoch once."""

    def __init__(self, size: int, weights: Sequence[float] | None = None, seed: int = 0) -> None:
        if weights is not None:
            w = torch.as_tensor(list(weights), dtype=torch.double)
            if len(w) != size:
                raise ValueError(f"{len(w)} weights for {size} samples")
            if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
                raise ValueError("sampling weights must be finite, >= 0 and not all 0")
            self.weights: torch.Tensor | None = w
        else:
            self.weights = None
        self.size = size
        self.seed = seed
        self.epoch = 0
        self._skip: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, skip: int) -> None:
        """Leave out the first ``skip`` indices the next time epoch ``epoch`` is iterated."""
        self._skip = (epoch, skip)

    def order(self, epoch: int) -> torch.Tensor:
        """The full index order of ``epoch``."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.weights is None:
            return torch.randperm(self.size, generator=gen)
        return torch.multinomial(self.weights, self.size, replacement=True, generator=gen)

    def __iter__(self) -> Iterator[int]:
        start = 0
        if self._skip is not None and self._skip[0] == self.epoch:
            start = self._skip[1]
        self._skip = None
        yield from self.order(self.epoch)[start:].tolist()

    def __len__(self) -> int:
        return self.size


class ResumableLoader(DataLoader):
    """A DataLoader over an `EpochSampler` whose state is (epoch, batches trained in it).

    ``trained_batches`` returns how many batches of the current epoch the training loop has
    processed (see `lightning_trained_batches`); resuming skips that many batches' indices."""

    def __init__(
        self,
        dataset: Dataset,
        *,
        sampler: EpochSampler,
        trained_batches: Callable[[], int],
        batch_size: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self._trained_batches = trained_batches

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": int(self._trained_batches())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if not isinstance(self.sampler, EpochSampler):
            # Lightning's distributed wrapper shards our order per rank; skipping inside it
            # would misalign the shards, so a distributed run draws the epoch again instead
            warnings.warn(
                "a distributed run resumed mid-epoch draws that epoch again (exact mid-epoch "
                "resumption is for single-device runs)",
                stacklevel=2,
            )
            return
        self.sampler.resume_at(epoch, batches * self.batch_size)


def lightning_trained_batches(owner: Any) -> Callable[[], int]:
    """A `ResumableLoader` ``trained_batches`` reading the batches of the current epoch that
    ``owner.trainer`` (a LightningModule or LightningDataModule) has trained; 0 unattached."""

    def trained() -> int:
        trainer = getattr(owner, "trainer", None)
        if trainer is None:
            return 0
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed

    return trained
