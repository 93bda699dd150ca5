"""Helper script of tests/run/test_strategies.py: real RL runs on 2 CPU processes under every strategy, one
after another in the same processes (the process group is made once).

Unlike `tests/sharded_replay.py` nothing is replayed: each rank samples its own prompts with the hf engine, so
the ranks' rollouts differ in prompt and response lengths, their token-budget micro-batches differ in count,
dynamic sampling refills a different number of times and validation holds a different number of batches (5 + 3
problems, 2 a batch: 3 on one rank, 2 on the other). Each rank records what it did; rank 0 records the final
weights (gathered from ZeRO-3 / FSDP shards).

    python tests/sharded_runs.py OUT_DIR PLAN [PLAN ...]       (PLANS below; OUT_DIR/<plan>.rank<r>.json)
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path

import lightning as L
import torch
from omegaconf import open_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipo.compose import compose  # noqa: E402
from clipo.distributed import world  # noqa: E402
from clipo.registry import VERIFIERS  # noqa: E402
from clipo.rl.batching import UpdateBatching  # noqa: E402
from clipo.rl.collector import RolloutCollector  # noqa: E402
from clipo.train import train  # noqa: E402
from tests.conftest import TINY_OVERRIDES, ParityVerifier, with_callback  # noqa: E402

LOSS_MODE = ["contrastive.mode=loss", "loss=supcon", "contrastive.coef=0.5"]
# groups of 3 scored by parity: a quarter of them have no variance, so ranks refill different numbers of times
DAPO = ["sampling=dapo", "sampling.max_refill_batches=2", "rollout.group_size=3"]
# name: (strategy, steps, extra overrides); "-resume" plans start from step 2 of the plan named before "-resume"
PLANS = {
    "ddp-reward": ("ddp", 4, DAPO),
    "zero2-loss": ("deepspeed_zero2", 4, LOSS_MODE),
    "zero3-reward": ("deepspeed_zero3", 4, DAPO),
    "zero3-reward-resume": ("deepspeed_zero3", 4, DAPO),
    "fsdp-loss": ("fsdp", 4, LOSS_MODE + DAPO),
}


class Record(L.Callback):
    """What this rank did: forward passes per micro-batching (real ones, all), generations per RL step,
    validation batches per pass, and whether every logged metric was finite."""

    def __init__(self) -> None:
        self.passes: list[list[int]] = []
        self.generations: Counter[int] = Counter()
        self.val_batches: list[int] = []
        self.steps = 0
        self.finite = True

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.steps += 1
        self.finite &= all(math.isfinite(float(v)) for v in trainer.callback_metrics.values() if v.numel() == 1)

    def on_validation_epoch_start(self, trainer, module) -> None:  # noqa: ANN001
        self.val_batches.append(0)

    def on_validation_batch_end(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        self.val_batches[-1] += 1


RECORD = Record()


def recorded_micro_batches(micro_batches):  # noqa: ANN001, ANN201
    def wrapped(self, rollouts, index, micro):  # noqa: ANN001
        parts = micro_batches(self, rollouts, index, micro)
        RECORD.passes.append([sum(not p.stand_in for p in parts), len(parts)])
        return parts

    return wrapped


def counted_generation(generate_and_score):  # noqa: ANN001, ANN201
    def wrapped(self, records, timer, trainer_state, sampled=None):  # noqa: ANN001
        RECORD.generations[RECORD.steps + 1] += sampled is None
        return generate_and_score(self, records, timer, trainer_state, sampled)

    return wrapped


def run_plan(out_dir: Path, name: str) -> None:
    strategy, steps, extra = PLANS[name]
    if name.endswith("-resume"):
        straight = out_dir / name.removesuffix("-resume")
        extra = [*extra, f"ckpt_path={straight / 'checkpoints' / 'step_000002.ckpt'}"]
    sharded = ["+strategy.param_persistence_threshold=0"] if strategy == "deepspeed_zero3" else []
    cfg = compose(
        [*TINY_OVERRIDES, f"trainer.max_steps={steps}", "trainer.accelerator=cpu", "trainer.devices=2",
         f"strategy={strategy}", "strategy.process_group_backend=gloo", *sharded, "data.prompts_per_step=4",
         "rollout.max_new_tokens=16", "ppo.max_tokens_per_micro_batch=300", "validation.before_training=true",
         "data.val.arith.size=5", "data.val.arith_p1.size=3", "data.val_batch_size=2", "logger=none",
         "callbacks.model_checkpoint.every_n_train_steps=1", "callbacks.model_checkpoint.save_top_k=-1", *extra],
        out_dir / name,
    )
    with open_dict(cfg):
        cfg.verifier = {"name": "parity"}
    RECORD.__init__()
    metrics, objects = train(cfg)
    weights = objects["module"].full_policy_state() or objects["module"].policy.state_dict()
    rank = world()[0]
    record = {"steps": RECORD.steps, "finite": RECORD.finite, "passes": RECORD.passes, "val_batches": RECORD.val_batches,
              "generations": [RECORD.generations[s] for s in sorted(RECORD.generations)],
              "engine": objects["module"].collector.engine.__class__.__name__, "reward": metrics.get("train/reward")}
    (out_dir / f"{name}.rank{rank}.json").write_text(json.dumps(record))
    if objects["trainer"].is_global_zero:
        torch.save({k: v.detach().float().cpu() for k, v in weights.items()}, out_dir / f"{name}.pt")


def main() -> None:
    out_dir, *names = [arg for arg in sys.argv[1:] if not arg.startswith("hydra.")]
    VERIFIERS._entries["parity"] = ParityVerifier
    UpdateBatching.micro_batches = recorded_micro_batches(UpdateBatching.micro_batches)
    RolloutCollector._generate_and_score = counted_generation(RolloutCollector._generate_and_score)
    L.Trainer.__init__ = with_callback(L.Trainer.__init__, RECORD)
    for name in names:
        run_plan(Path(out_dir), name)


if __name__ == "__main__":
    main()
