"""PromptDataModule: batches, seeding, validation loaders, exact resume of the data position."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from clipo.data import PromptDataModule

TRAIN = {"source": "arith", "size": 12, "levels": [1]}  # 12 records, 3 batches of 4 an epoch


def make(seed: int = 0, **kwargs) -> PromptDataModule:
    return PromptDataModule(train=TRAIN, prompts_per_step=4, seed=seed, **kwargs)


def take(datamodule: PromptDataModule, epochs: int) -> list[list[int]]:
    """Batches (as record indices) over `epochs` passes of the train loader."""
    loader = datamodule.train_dataloader()
    return [[r["index"] for r in batch] for _ in range(epochs) for batch in loader]


def test_batches_are_lists_of_records_and_epochs_reshuffle():
    batches = take(make(), epochs=2)
    assert len(batches) == 6 and all(len(b) == 4 for b in batches)
    for epoch in (batches[:3], batches[3:]):
        assert sorted(itertools.chain(*epoch)) == list(range(12))  # each record once an epoch
    assert batches[:3] != batches[3:]
    batch = next(iter(make().train_dataloader()))
    assert isinstance(batch, list) and {"messages", "ground_truth", "data_source", "index"} <= batch[0].keys()


def test_shuffling_is_seeded():
    assert take(make(seed=1), 2) == take(make(seed=1), 2)
    assert take(make(seed=1), 2) != take(make(seed=2), 2)


def test_remainder_is_dropped():
    datamodule = PromptDataModule(train={"source": "arith", "size": 10}, prompts_per_step=4)
    assert [len(b) for b in datamodule.train_dataloader()] == [4, 4]


def test_too_small_train_set_is_a_clear_error():
    with pytest.raises(ValueError, match="3 records, fewer than prompts_per_step=4"):
        PromptDataModule(train={"source": "arith", "size": 3}, prompts_per_step=4).train_dataloader()


def test_val_loaders_are_ordered_and_unshuffled():
    val = {"b": {"source": "arith", "size": 6, "seed": 5}, "a": {"source": "arith", "size": 5, "perturbations": ["p1"]}}
    datamodule = make(val=val)
    assert datamodule.val_set_names == ["b", "a"]
    loaders = datamodule.val_dataloader()
    assert [[r["index"] for b in loader for r in b] for loader in loaders] == [list(range(6)), list(range(5))]
    assert all(r["perturbation"] == "p1" for b in loaders[1] for r in b)


def test_val_sets_are_split_across_ranks_without_padding():
    val = {"a": {"source": "arith", "size": 7, "seed": 5}}
    shards = []
    for rank in range(3):
        datamodule = make(val=val)
        datamodule.trainer = SimpleNamespace(global_rank=rank, world_size=3)
        shards.append([r["index"] for batch in datamodule.val_dataloader()[0] for r in batch])
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]  # every problem exactly once


@pytest.mark.parametrize("k", [0, 2, 3, 4, 7])
def test_resume_by_hand_continues_exactly(k):
    uninterrupted = take(make(), epochs=4)
    first = make()
    loader = first.train_dataloader()
    batches = itertools.chain.from_iterable(loader for _ in range(4))  # a new iter() an epoch, as Lightning does
    seen = [[r["index"] for r in batch] for batch in itertools.islice(batches, k)]
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    rest = take(resumed, epochs=4)[: 12 - k]  # it finishes the interrupted epoch, then goes on
    assert seen + rest == uninterrupted


def test_state_mismatch_is_a_clear_error():
    state = make().state_dict()
    with pytest.raises(ValueError, match="prompts_per_step"):
        PromptDataModule(train=TRAIN, prompts_per_step=3).load_state_dict(state)
    state["num_records"] = 99
    with pytest.raises(ValueError, match="99 records"):
        make().load_state_dict(state)


class Recorder(L.LightningModule):
    """Records the record indices of every train batch; the loss is a dummy."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append([r["index"] for r in batch])
        return (self.weight * 0.0).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(max_steps: int, ckpt_path=None, num_workers: int = 0) -> tuple[Recorder, L.Trainer]:
    trainer = L.Trainer(
        max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip
    module = Recorder()
    trainer.fit(module, datamodule=make(num_workers=num_workers), ckpt_path=ckpt_path)
    return module, trainer


@pytest.mark.parametrize(("stop", "num_workers"), [(2, 0), (3, 0), (5, 1)])
def test_resume_through_a_lightning_checkpoint(tmp_path, stop, num_workers):
    uninterrupted, _ = fit(8)
    first, trainer = fit(stop, num_workers=num_workers)
    # with workers the sampler has run ahead of training (prefetch): the position must not
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    second, _ = fit(8, ckpt_path=tmp_path / "last.ckpt", num_workers=num_workers)
    assert first.seen + second.seen == uninterrupted.seen
