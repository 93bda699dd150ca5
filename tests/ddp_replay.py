"""Helper script of tests/test_distributed.py: one RL step on one fixed global batch, 1 or 2 processes.

    python tests/ddp_replay.py OUT_DIR DEVICES PLAN [PLAN ...]      (PLANS below)

Each plan runs in turn in the same launch (one interpreter start for them all). Every process
generates the same global batch (same weights, same seed) and keeps its share of the groups, so a
2-process DDP step and a 1-process step train on exactly the same rollouts. Rank 0 saves the logged
metrics and the updated policy weights to OUT_DIR/PLAN.devicesN.pt. The optimizer is
plain SGD, whose step is proportional to the gradient (Adam's first step is nearly its sign,
which would hide a wrongly scaled loss).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf, open_dict

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clipo.compose import compose  # noqa: E402
from clipo.data import build_dataset  # noqa: E402
from clipo.distributed import world  # noqa: E402
from clipo.registry import VERIFIERS  # noqa: E402
from clipo.rl.collector import RolloutCollector  # noqa: E402
from clipo.train import train  # noqa: E402
from tests.conftest import TINY_OVERRIDES, ParityVerifier  # noqa: E402

GLOBAL_PROMPTS = 4
TRAIN_SET = None  # the run's train set, built in run_plan()
# name: (overrides, one process's own, two processes' own)
PLANS = {
    "grpo-token-mean": (["loss=none"], [], []),
    "reinforce_pp-seq-mean-clipo-batch-level": (
        ["advantage=reinforce_pp", "algorithm.aggregation=seq-mean-token-mean", "loss=infonce", "loss.level=batch"],
        [], []),
    # micro-batches by tokens: a rank whose rollouts pack into fewer passes runs stand-ins to the same count;
    # the single process runs the padded forward, DDP the varlen rows: they equal it too
    "grpo-token-budget": (["loss=none", "ppo.max_tokens_per_micro_batch=320"], ["ppo.forward_layout=padded"],
                          ["ppo.forward_layout=varlen"]),
    # ConSPO averages over the mixed groups of all ranks; its full margin from the first step
    "conspo": (["loss=none", "algorithm=conspo", "algorithm.alpha=0", "ppo.micro_batch_size=4"], [], []),
}


def replay_share(self: RolloutCollector, batch: list[dict], timer, trainer_state, sampled=None):  # noqa: ANN001
    """Stands in for `RolloutCollector._generate_and_score`: this rank's share of one fixed global batch (the
    synchronous runs here never hand it `sampled` rollouts)."""
    assert sampled is None
    records = [TRAIN_SET[i] for i in range(GLOBAL_PROMPTS)]
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        rollouts = self.engine.generate(records, self.group_size, self.sampling, self.capture_layer)
    scores = self.rewards(records, rollouts, trainer_state)
    rank, world_size = world()
    share = len(rollouts.responses) // world_size
    index = torch.arange(share) + rank * share
    return rollouts.select(index), scores.select(index)


def run_plan(out_dir: Path, devices: int, name: str) -> None:
    common, one, two = PLANS[name]
    parallel = ["strategy=ddp", "strategy.process_group_backend=gloo"] if devices > 1 else []
    cfg = compose(
        [*TINY_OVERRIDES, "trainer.max_steps=1", "trainer.accelerator=cpu", f"trainer.devices={devices}", *parallel,
         f"data.prompts_per_step={GLOBAL_PROMPTS}", "data.val=null", "logger=none",
         "~callbacks.model_checkpoint", "optimizer._target_=torch.optim.SGD", "~optimizer.betas", "optimizer.lr=0.5",
         "ppo.max_grad_norm=null", "ppo.micro_batch_size=2", *common, *(two if devices > 1 else one)],
        out_dir / f"{name}.run{devices}",
    )
    with open_dict(cfg):
        cfg.verifier = {"name": "parity"}
    global TRAIN_SET
    TRAIN_SET = build_dataset(**OmegaConf.to_container(cfg.data.train, resolve=True))  # the datamodule's train set
    metrics, objects = train(cfg)
    policy = objects["module"].policy
    weights = objects["module"].full_policy_state() or policy.state_dict()  # ZeRO-3 / FSDP: gathered by every rank
    if objects["trainer"].is_global_zero:
        torch.save({"metrics": metrics, "weights": weights}, out_dir / f"{name}.devices{devices}.pt")


def main() -> None:
    # Lightning restarts this script for rank 1 with Hydra's run-dir arguments appended: skip them
    out_dir, devices, *names = [arg for arg in sys.argv[1:] if not arg.startswith("hydra.")]
    VERIFIERS._entries["parity"] = ParityVerifier
    RolloutCollector._generate_and_score = replay_share
    for name in names:
        run_plan(Path(out_dir), int(devices), name)


if __name__ == "__main__":
    main()
