"""A seeded, resumable batch sampler: the data position survives a checkpoint."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableBatchSampler(Sampler[list[int]]):
    """Batches of a fresh seeded permutation each epoch, resumable mid-epoch.

    Epoch `e` uses the permutation of `torch.Generator().manual_seed(seed + e)`
    (as torch's DistributedSampler does), cut into `batches_per_epoch` full
    batches (the remainder is dropped). The whole state is `consumed`, the
    number of batches handed out since the start: it fixes the epoch and the
    position within it. With `world_size > 1`, the ranks take disjoint slices of
    each step's `batch_size * world_size` records of the shared permutation.

    Args:
        num_records: size of the dataset.
        batch_size: records per batch (per rank).
        seed: shuffling seed.
        rank, world_size: this process's slice of each step.
    """

    def __init__(self, num_records: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if num_records < batch_size * world_size:
            raise ValueError(
                f"the train set has {num_records} records, fewer than one step needs "
                f"(prompts_per_step={batch_size} x world_size={world_size}); lower prompts_per_step or add data"
            )
        self.num_records, self.batch_size, self.seed = num_records, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = num_records // (batch_size * world_size)
        self.consumed = 0

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of `epoch`, in order, for this rank."""
        order = torch.randperm(self.num_records, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        step = self.batch_size * self.world_size
        first = self.rank * self.batch_size
        return [order[s * step + first : s * step + first + self.batch_size] for s in range(self.batches_per_epoch)]

    def __iter__(self) -> Iterator[list[int]]:
        # one epoch from the current position; the next iter() starts the next epoch
        epoch, position = divmod(self.consumed, self.batches_per_epoch)
        for batch in self.epoch_batches(epoch)[position:]:
            self.consumed += 1
            yield batch

    def __len__(self) -> int:
        # a full epoch even when resuming mid-epoch: Lightning counts the batches already done
        return self.batches_per_epoch
