"""`PromptDataModule`: batches of prompt records for RL steps, resumable mid-epoch.

Each batch is a plain list of `prompts_per_step` records (no collation, no
tokenizing). The train loader reshuffles every epoch (seeded) and drops the
remainder; train by `max_steps`. The data position goes into checkpoints
through `state_dict()`, so a resumed run sees exactly the batches it would have.

`prompts_per_step` is the global batch: under data parallelism each of W ranks takes its own
`prompts_per_step / W` prompts of the step (by `trainer.global_rank`), so set the Trainer's
`use_distributed_sampler=False`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Subset

from clipo.data.sampler import ResumableBatchSampler
from clipo.data.sources import build_dataset
from clipo.evaluation.scoring import split_set_spec

__all__ = ["PromptDataModule", "ResumableBatchSampler", "ResumableLoader", "collate_records"]


class ResumableLoader(DataLoader):
    """The train DataLoader; Lightning sees it as resumable, its state being the datamodule's."""

    def __init__(self, *args: Any, datamodule: PromptDataModule, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.datamodule = datamodule

    def state_dict(self) -> dict[str, Any]:
        return self.datamodule.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.datamodule.load_state_dict(state_dict)


def collate_records(records: list[dict]) -> list[dict]:
    """Keep a batch as the list of records (module-level so that workers can pickle it)."""
    return list(records)


class PromptDataModule(L.LightningDataModule):
    """Train and validation prompt sets, each given as `build_dataset` kwargs (with `source`).

    Args:
        train: kwargs of the train set, e.g. `{"source": "arith", "size": 2000}`.
        val: validation sets by name (their order is the loaders' order), or None.
        prompts_per_step: prompts per RL step, over all ranks together.
        seed: shuffling seed of the train loader.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        train: dict,
        val: dict[str, dict] | None = None,
        prompts_per_step: int = 8,
        seed: int = 0,
        num_workers: int = 0,
        val_batch_size: int = 32,
    ) -> None:
        super().__init__()
        if prompts_per_step < 1:
            raise ValueError(f"prompts_per_step must be >= 1, got {prompts_per_step}")
        for name, spec in {"train": train, **{f"val.{k}": v for k, v in (val or {}).items()}}.items():
            if "source" not in spec:
                raise ValueError(f"data set {name!r} needs a 'source' (arith, parquet or hub), got keys {list(spec)}")
        self.train_spec = dict(train)
        # a validation spec also names its verifier and perturbed twins (the builders read those);
        # the rest builds the data set
        self.val_specs = {name: split_set_spec(spec)[0] for name, spec in (val or {}).items()}
        self.prompts_per_step, self.seed, self.num_workers = prompts_per_step, seed, num_workers
        self.val_batch_size = val_batch_size
        self._refills = 0  # extra train batches drawn for DAPO's dynamic sampling
        self.train_set: Any = None
        self.val_sets: dict[str, Any] = {}
        self.sampler: ResumableBatchSampler | None = None
        self._consumed = 0  # train batches taken by the training loop (or to resume from)

    @property
    def val_set_names(self) -> list[str]:
        return list(self.val_specs)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = build_dataset(**self.train_spec)
            if len(self.train_set) < self.prompts_per_step:
                raise ValueError(
                    f"the train set has {len(self.train_set)} records, fewer than prompts_per_step="
                    f"{self.prompts_per_step}; lower prompts_per_step or use a larger train set"
                )
        for name, spec in self.val_specs.items():
            if name not in self.val_sets:
                self.val_sets[name] = build_dataset(**spec)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        self.sampler = ResumableBatchSampler(len(self.train_set), self.prompts_per_rank, self.seed, *self._rank_and_world())
        self.sampler.consumed = self._consumed
        return ResumableLoader(
            self.train_set, batch_sampler=self.sampler, collate_fn=collate_records,
            num_workers=self.num_workers, datamodule=self,
        )  # fmt: skip

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per set, in order. Under data parallelism rank r scores problems r, r + W, ...:
        every problem once, no padding (the metrics' states are sums, added over ranks)."""
        self.setup("validate")
        rank, world = self._rank_and_world()
        return [
            DataLoader(
                Subset(self.val_sets[name], range(rank, len(self.val_sets[name]), world)),
                batch_size=self.val_batch_size, shuffle=False, collate_fn=collate_records, num_workers=self.num_workers,
            )  # fmt: skip
            for name in self.val_set_names
        ]

    @property
    def prompts_per_rank(self) -> int:
        """This process's share of `prompts_per_step` (the global batch of every rank together)."""
        world = self._rank_and_world()[1]
        if self.prompts_per_step % world:
            raise ValueError(
                f"prompts_per_step={self.prompts_per_step} does not split evenly over {world} processes; "
                f"use a multiple of {world}"
            )
        return self.prompts_per_step // world

    def _rank_and_world(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def refill_batch(self) -> list[dict]:
        """One more batch of train prompts (DAPO's dynamic sampling), from a stream of its own
        (another seed), so the main order is untouched; its position is part of the state."""
        sampler = ResumableBatchSampler(len(self.train_set), self.prompts_per_rank, self.seed + 7919, *self._rank_and_world())
        epoch, position = divmod(self._refills, sampler.batches_per_epoch)
        self._refills += 1
        return collate_records([self.train_set[i] for i in sampler.epoch_batches(epoch)[position]])

    def upcoming_batch(self, ahead: int) -> list[dict]:
        """The records the train loader will hand out `ahead` steps after the current one (the asynchronous
        rollout pipeline samples them early); nothing is consumed."""
        epoch, position = divmod(self._consumed - 1 + ahead, self.sampler.batches_per_epoch)
        return collate_records([self.train_set[i] for i in self.sampler.epoch_batches(epoch)[position]])

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Lightning fetches one batch ahead (and workers more), so the sampler's count
        # runs ahead of training; a batch counts as consumed when it reaches the step
        if self.trainer is not None and self.trainer.training:
            self._consumed += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        # under a Trainer count the batches the loop took; used by hand, those the loader gave
        in_trainer = self.trainer is not None or self.sampler is None
        consumed = self._consumed if in_trainer else self.sampler.consumed
        return {
            "batches_consumed": consumed,
            "refill_batches": self._refills,
            "num_records": None if self.train_set is None else len(self.train_set),
            "prompts_per_step": self.prompts_per_step,
            "seed": self.seed,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key in ("prompts_per_step", "seed"):
            if state_dict[key] != getattr(self, key):
                raise ValueError(
                    f"cannot resume the data position: the checkpoint has {key}={state_dict[key]}, this run has "
                    f"{getattr(self, key)}; use the checkpoint's value or start a fresh run"
                )
        self.setup("fit")
        if state_dict["num_records"] not in (None, len(self.train_set)):
            raise ValueError(
                f"cannot resume the data position: the checkpoint's train set had {state_dict['num_records']} records, "
                f"this one has {len(self.train_set)}; use the same train data or start a fresh run"
            )
        self._consumed = state_dict["batches_consumed"]
        self._refills = state_dict.get("refill_batches", 0)
        if self.sampler is not None:
            self.sampler.consumed = self._consumed
