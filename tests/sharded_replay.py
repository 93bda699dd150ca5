"""Helper script of tests/test_sharded.py: `tests/ddp_replay.py`'s fixed-batch RL steps, recording the
policy's full weights after every step (gathered from ZeRO-3 / FSDP shards), what the contrastive head
looks like under the strategy, and writing last.ckpt in the strategy's own format.

    python tests/sharded_replay.py OUT.pt DEVICES [overrides...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf, open_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tests.ddp_replay as replay  # noqa: E402
from clipo.collector import RolloutCollector  # noqa: E402
from clipo.compose import compose  # noqa: E402
from clipo.data import build_dataset  # noqa: E402
from clipo.registry import VERIFIERS  # noqa: E402
from clipo.strategies import sharded_state_dict  # noqa: E402
from clipo.train import train  # noqa: E402
from tests.conftest import TINY_OVERRIDES, ParityVerifier  # noqa: E402


def replay_gathered(self: RolloutCollector, batch, timer, generation_context, trainer_state):  # noqa: ANN001
    """`ddp_replay.replay_share` inside the strategy's generation context (weights gathered for the phase)."""
    with generation_context():
        return replay.replay_share(self, batch, timer, generation_context, trainer_state)


class RecordSteps(L.Callback):
    """After each RL step: the policy's full weights, and the head's dtype, sharding and optimizer."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []
        self.head: dict = {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        policy = module.policy
        self.weights.append(sharded_state_dict(policy) or {k: v.clone() for k, v in policy.state_dict().items()})
        params = list(module.contrastive.parameters())
        optimizer = module.head_step.optimizer
        self.head = {
            "dtypes": sorted({str(p.dtype) for p in params}),
            "sharded": any(hasattr(p, "ds_id") or type(p.data).__name__ == "DTensor" for p in params),
            "in_head_optimizer": optimizer is not None and {id(p) for g in optimizer.param_groups for p in g["params"]}
            == {id(p) for p in params if p.requires_grad},
            "policy_dtype": str(next(policy.parameters()).dtype),
            "state": {k: v.detach().float().clone() for k, v in module.contrastive.state_dict().items()
                      if isinstance(v, torch.Tensor)},
        }


def main() -> None:
    out, devices, *overrides = [arg for arg in sys.argv[1:] if not arg.startswith("hydra.")]
    devices = int(devices)
    cfg = compose(
        [*TINY_OVERRIDES, "trainer.max_steps=1", "trainer.accelerator=cpu", f"trainer.devices={devices}",
         f"data.prompts_per_step={replay.GLOBAL_PROMPTS}", "data.val=null", "logger=none",
         "callbacks.model_checkpoint.every_n_train_steps=1", "optimizer._target_=torch.optim.SGD", "~optimizer.betas",
         "optimizer.lr=0.5", "ppo.max_grad_norm=null", "ppo.micro_batch_size=2", *overrides],
        Path(out).parent / f"run-{Path(out).stem}",
    )
    with open_dict(cfg):
        cfg.verifier = {"name": "parity"}
    VERIFIERS._entries["parity"] = ParityVerifier
    replay.TRAIN_SET = build_dataset(**OmegaConf.to_container(cfg.data.train, resolve=True))
    RolloutCollector._generate_and_score = replay_gathered
    recorder = RecordSteps()
    L.Trainer.__init__ = _with_callback(L.Trainer.__init__, recorder)
    metrics, objects = train(cfg)
    trainer = objects["trainer"]
    if trainer.is_global_zero:
        torch.save({"metrics": metrics, "steps": recorder.weights, "head": recorder.head,
                    "checkpoint": trainer.checkpoint_callback.last_model_path, "run_dir": cfg.paths.output_dir}, out)


def _with_callback(init, callback):  # noqa: ANN001, ANN202
    def patched(self, *args, callbacks=None, **kwargs):  # noqa: ANN001, ANN002, ANN003
        init(self, *args, callbacks=[*(callbacks or []), callback], **kwargs)

    return patched


if __name__ == "__main__":
    main()
