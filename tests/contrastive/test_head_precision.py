"""The contrastive head and its AdamW state stay float32 under mixed precision, whatever the
strategy does to the module (the official head is float32; bf16 would round its lr-1e-3 steps)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from omegaconf import open_dict

from clipo.train import train
from tests.conftest import tiny_parity_config


class HeadDtypes(L.Callback):
    """Records the dtypes of the head's parameters and of its optimizer's state tensors."""

    def __init__(self) -> None:
        self.seen: dict[str, set[torch.dtype]] = {}

    def _record(self, when: str, module: L.LightningModule) -> None:
        params = {p.dtype for p in module.contrastive.parameters()}
        state = module.head_step.optimizer.state.values() if module.head_step.optimizer is not None else []
        moments = {v.dtype for s in state for k, v in s.items() if k != "step" and torch.is_tensor(v)}
        self.seen[f"{when}/params"], self.seen[f"{when}/state"] = params, moments

    def on_train_start(self, trainer, module) -> None:
        self._record("start", module)

    def on_train_batch_end(self, trainer, module, *args) -> None:
        self._record("after_step", module)


class CastingStrategy(SingleDeviceStrategy):
    """Casts the whole module to bf16 after set-up, as DeepSpeed's engine does under bf16-mixed
    (`module.bfloat16()` in `deepspeed.initialize`); DeepSpeed itself needs CUDA."""

    def __init__(self) -> None:
        super().__init__(device=torch.device("cpu"))

    def setup(self, trainer: L.Trainer) -> None:
        super().setup(trainer)
        self.model.to(torch.bfloat16)


@pytest.mark.parametrize("strategy", ["auto", "ddp", "casting"])
def test_head_and_its_optimizer_state_stay_float32_under_bf16_mixed(strategy, parity_verifier, tmp_path):
    overrides = ["trainer.precision=bf16-mixed", "trainer.max_steps=1", "data.val=null", "trainer.accelerator=cpu"]
    if strategy != "casting":
        overrides.append(f"strategy={strategy}")
    cfg = tiny_parity_config(tmp_path, *overrides)
    with open_dict(cfg):
        cfg.callbacks.head_dtypes = {"_target_": f"{__name__}.HeadDtypes"}
        if strategy == "casting":
            cfg.strategy = {"name": "ddp", "_target_": f"{__name__}.CastingStrategy"}  # whole parameters, as DDP
    _, objects = train(cfg)

    probe = next(c for c in objects["trainer"].callbacks if isinstance(c, HeadDtypes))
    module = objects["module"]
    if strategy == "casting":  # the emulated engine did cast the module: the policy is bf16
        assert module.policy.get_decoder().norm.weight.dtype == torch.bfloat16
    assert probe.seen["start/params"] == probe.seen["after_step/params"] == {torch.float32}
    assert probe.seen["after_step/state"] == {torch.float32}, "the head's AdamW moments must be float32"
