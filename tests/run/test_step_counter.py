"""A step is an RL step: max_steps, checkpoint intervals and resume count rollout batches, not updates."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from clipo.run.step_counter import RLStepCounter


class TwoUpdatesAStep(L.LightningModule):
    """A toy manual-optimization module making `updates` optimizer steps per training batch."""

    def __init__(self, updates: int = 2) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.layer = torch.nn.Linear(2, 1)
        self.updates_per_step, self.counter, self.steps_seen = updates, RLStepCounter(), []

    def training_step(self, batch, batch_idx):
        with self.counter.step(self._trainer):
            optimizer = self.optimizers()
            for _ in range(self.updates_per_step):
                loss = self.layer(batch).pow(2).mean()
                optimizer.zero_grad()
                self.manual_backward(loss)
                optimizer.step()
        self.steps_seen.append(batch_idx)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.layer(batch).pow(2).mean())

    def on_validation_epoch_start(self):
        self.validated_at = [*getattr(self, "validated_at", []), self.trainer.global_step]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["counter"] = self.counter.state_dict()

    def on_load_checkpoint(self, checkpoint):
        self.counter.load_state_dict(checkpoint["counter"])


def loader():
    return DataLoader(torch.randn(20, 2), batch_size=2)


def fit(tmp_path, module, max_steps, ckpt_path=None, **kwargs):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="step_{step:02d}", every_n_train_steps=1, save_top_k=-1,
                                 auto_insert_metric_name=False)
    trainer = L.Trainer(max_steps=max_steps, callbacks=[checkpoint], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", **kwargs)
    trainer.fit(module, train_dataloaders=loader(), ckpt_path=ckpt_path, **(
        {"val_dataloaders": loader()} if "val_check_interval" in kwargs else {}))
    return trainer


@pytest.mark.parametrize("updates", [2, 0])  # 0: a head-only warm-up step counts too
def test_max_steps_counts_rl_steps_and_checkpoints_follow_them(tmp_path, updates):
    module = TwoUpdatesAStep(updates)
    trainer = fit(tmp_path, module, max_steps=3)
    assert module.steps_seen == [0, 1, 2] and trainer.global_step == 3  # 3 RL steps
    assert module.counter.updates == 3 * updates  # 6 optimizer updates (or none)
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["step_01.ckpt", "step_02.ckpt", "step_03.ckpt"]


def test_without_the_counter_lightning_counts_updates(tmp_path):
    """The behaviour this fixes: two updates a step end a max_steps=4 run after 2 batches."""
    module = TwoUpdatesAStep(2)
    module.counter.step = lambda trainer: __import__("contextlib").nullcontext()
    trainer = fit(tmp_path, module, max_steps=4)
    assert module.steps_seen == [0, 1] and trainer.global_step == 4


def test_resume_continues_in_rl_steps(tmp_path):
    first = TwoUpdatesAStep(2)
    fit(tmp_path / "a", first, max_steps=2)
    resumed = TwoUpdatesAStep(2)
    trainer = fit(tmp_path / "b", resumed, max_steps=3, ckpt_path=tmp_path / "a" / "step_02.ckpt")
    assert resumed.steps_seen == [2] and trainer.global_step == 3 and resumed.counter.updates == 6


def test_validation_interval_counts_rl_steps(tmp_path):
    module = TwoUpdatesAStep(2)
    trainer = fit(tmp_path, module, max_steps=4, val_check_interval=2, check_val_every_n_epoch=None,
                  num_sanity_val_steps=0, limit_val_batches=1)
    assert trainer.global_step == 4 and module.steps_seen == [0, 1, 2, 3]
    assert module.validated_at == [2, 4]  # after RL steps 2 and 4 (global_step would read 4 and 8 without the counter)


def test_train_max_steps_3_with_2_updates_a_step_makes_3_rl_steps(parity_verifier, tmp_path):
    from clipo.train import train
    from tests.conftest import tiny_parity_config

    # 2 prompts x 4 rollouts = 8 rollouts a step; mini-batches of 4 -> 2 optimizer updates a step
    cfg = tiny_parity_config(tmp_path, "trainer.max_steps=3", "ppo.mini_batch_size=4", "data.val=null",
                             "callbacks.model_checkpoint.every_n_train_steps=1", "callbacks.model_checkpoint.save_top_k=-1")
    _, objects = train(cfg)
    module, trainer = objects["module"], objects["trainer"]
    assert trainer.global_step == module.rl_step == 3 and module.step_counter.updates == 6
    assert [row["step"] for row in objects["summary"].history] == [1.0, 2.0, 3.0]
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*.ckpt"))
    assert names == ["step_000001.ckpt", "step_000002.ckpt", "step_000003.ckpt"]
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 3 and saved["clipo"]["optimizer_updates"] == {"updates": 6}
