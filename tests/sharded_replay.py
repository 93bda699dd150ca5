"""Helper script of tests/run/test_strategies.py: `tests/ddp_replay.py`'s fixed-batch RL steps under each
strategy, one training after another in the same processes (the process group is made once), recording
the policy's full weights after every step (gathered from ZeRO-3 / FSDP shards), the contrastive head,
and a checkpoint per step in the strategy's own format.

    python tests/sharded_replay.py OUT_DIR DEVICES PLAN [PLAN ...]      (PLANS below)
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf, open_dict
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tests.ddp_replay as replay  # noqa: E402
from clipo.compose import compose  # noqa: E402
from clipo.data import build_dataset  # noqa: E402
from clipo.registry import VERIFIERS  # noqa: E402
from clipo.rl.collector import RolloutCollector  # noqa: E402
from clipo.rollout.vllm_engine import named_weights  # noqa: E402
from clipo.train import train  # noqa: E402
from tests.conftest import TINY_OVERRIDES, ParityVerifier, with_callback  # noqa: E402


def replay_gathered(self: RolloutCollector, batch, timer, trainer_state, sampled=None):  # noqa: ANN001
    """`ddp_replay.replay_share`, recording that it runs inside the strategy's generation context (weights
    gathered for the whole sampling phase)."""
    RECORDER.whole_in_generation.append(not is_sharded_now(trainer_state.lightning_module.policy))
    return replay.replay_share(self, batch, timer, trainer_state, sampled)


def record_sharded_after_generation(collect):  # noqa: ANN001, ANN201
    """`RolloutCollector.collect`, recording whether the policy is sharded again once it returns."""
    def recorded(self, records, step, refill, timer, generation_context, trainer_state, sampled=None):  # noqa: ANN001
        result = collect(self, records, step, refill, timer, generation_context, trainer_state, sampled)
        RECORDER.sharded_after_generation.append(is_sharded_now(trainer_state.lightning_module.policy))
        return result

    return recorded


def is_sharded_now(policy: torch.nn.Module) -> bool:
    """Whether the policy's parameters are shards at this moment (ZeRO-3: empty; FSDP2: DTensors)."""
    return any(p.numel() == 0 or isinstance(p.data, DTensor) for p in policy.parameters())


class RecordSteps(L.Callback):
    """After each RL step: the policy's full weights, and the head's dtype, sharding, optimizer and weights."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []
        self.heads: list[dict] = []
        self.whole_in_generation: list[bool] = []
        self.sharded_after_generation: list[bool] = []
        self.vllm_push: dict = {}
        self.head_grads: list[dict[str, torch.Tensor]] = []

    def on_train_start(self, trainer, module) -> None:  # noqa: ANN001
        """The head's gradient at each of its optimizer steps, averaged over the ranks (`HeadStep.step`):
        what the ranks must agree on with one process, before AdamW amplifies rounding in tiny gradients."""
        optimizer = module.head_step.optimizer
        if optimizer is None:
            return
        names = {id(p): name for name, p in module.contrastive.named_parameters()}

        def record(opt, args, kwargs) -> None:  # noqa: ANN001
            self.head_grads.append({names[id(p)]: p.grad.detach().float().clone() for group in opt.param_groups
                                    for p in group["params"] if p.grad is not None})

        optimizer.register_step_pre_hook(record)

    def on_train_end(self, trainer, module) -> None:  # noqa: ANN001
        """What the vllm engine's weight push (`named_weights`) yields: every tensor whole, and the policy
        sharded again afterwards as before."""
        before = is_sharded_now(module.policy)
        pushed = {name: tensor.clone() for name, tensor in named_weights(module.policy)}
        self.vllm_push = {"weights": pushed, "sharded_before": before, "sharded_after": is_sharded_now(module.policy)}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        policy = module.policy
        self.weights.append(module.full_policy_state() or {k: v.clone() for k, v in policy.state_dict().items()})
        contrastive = module.contrastive or torch.nn.Module()  # loss=none builds no objective
        params = list(contrastive.parameters())
        optimizer = module.head_step.optimizer
        self.heads.append({
            "dtypes": sorted({str(p.dtype) for p in params}),
            "sharded": any(hasattr(p, "ds_id") or type(p.data).__name__ == "DTensor" for p in params),
            "in_head_optimizer": optimizer is not None and {id(p) for g in optimizer.param_groups for p in g["params"]}
            == {id(p) for p in params if p.requires_grad},
            "policy_dtype": str(next(policy.parameters()).dtype),
            "state": {k: v.detach().float().clone() for k, v in contrastive.state_dict().items()
                      if isinstance(v, torch.Tensor)},
        })


RECORDER = RecordSteps()
LOSS_MODE = ["contrastive.mode=loss", "loss=supcon", "contrastive.coef=0.5", "ppo.micro_batch_size=4"]
# name: (strategy, steps, extra overrides); "resume" runs start from the step-1 checkpoint of "<name>-reward"
PLANS = {
    "one-reward": ("auto", 2, []),
    "one-loss": ("auto", 1, LOSS_MODE),
    "ddp-reward": ("ddp", 2, []),
    "ddp-loss": ("ddp", 1, LOSS_MODE),
    **{f"{name}-{kind}": (strategy, steps, extra)
       for name, strategy in (("zero2", "deepspeed_zero2"), ("zero3", "deepspeed_zero3"), ("fsdp", "fsdp"))
       for kind, steps, extra in (("reward", 2, []), ("resume", 2, []), ("loss", 1, LOSS_MODE))},
    "zero3-bf16": ("deepspeed_zero3", 1, ["trainer.precision=bf16-mixed"]),
    # LoRA: the strategy the config check names for it (ZeRO-3 and FSDP refuse it)
    "one-lora": ("auto", 1, ["model.lora_rank=4", "loss=none"]),
    # two "nodes" of one process each, started as a launcher (torchrun, srun) would on two machines
    "nodes-zero3": ("deepspeed_zero3", 1, ["trainer.num_nodes=2"]),
    "zero2-lora": ("deepspeed_zero2", 1, ["model.lora_rank=4", "loss=none"]),
}


def run_plan(out_dir: Path, devices: int, name: str) -> None:
    """One training of `PLANS[name]`; rank 0 writes `<out_dir>/<name>.pt`."""
    strategy, steps, extra = PLANS[name]
    if name.endswith("-resume"):
        extra = [*extra, f"ckpt_path={out_dir / name.replace('-resume', '-reward') / 'checkpoints' / 'step_000001.ckpt'}"]
    backend = ["strategy.process_group_backend=gloo"] if strategy != "auto" else []
    if strategy == "deepspeed_zero3":  # partition every parameter (by default ZeRO-3 keeps small ones whole)
        backend.append("+strategy.param_persistence_threshold=0")
    cfg = compose(
        [*TINY_OVERRIDES, f"trainer.max_steps={steps}", "trainer.accelerator=cpu", f"trainer.devices={devices}",
         f"strategy={strategy}", *backend, f"data.prompts_per_step={replay.GLOBAL_PROMPTS}", "data.val=null",
         "logger=none", "callbacks.model_checkpoint.every_n_train_steps=1", "callbacks.model_checkpoint.save_top_k=-1",
         "optimizer._target_=torch.optim.SGD", "~optimizer.betas", "optimizer.lr=0.5", "ppo.max_grad_norm=null",
         "ppo.micro_batch_size=2", *extra],
        out_dir / name,
    )
    with open_dict(cfg):
        cfg.verifier = {"name": "parity"}
    replay.TRAIN_SET = build_dataset(**OmegaConf.to_container(cfg.data.train, resolve=True))
    RECORDER.__init__()
    metrics, objects = train(cfg)
    if objects["trainer"].is_global_zero:
        torch.save({"metrics": metrics, "steps": RECORDER.weights, "heads": RECORDER.heads,
                    "head_grads": RECORDER.head_grads,
                    "whole_in_generation": RECORDER.whole_in_generation, "vllm_push": RECORDER.vllm_push,
                    "sharded_after_generation": RECORDER.sharded_after_generation,
                    "run_dir": cfg.paths.output_dir}, out_dir / f"{name}.pt")


def main() -> None:
    out_dir, devices, *names = [arg for arg in sys.argv[1:] if not arg.startswith("hydra.")]
    VERIFIERS._entries["parity"] = ParityVerifier
    RolloutCollector._generate_and_score = replay_gathered
    RolloutCollector.collect = record_sharded_after_generation(RolloutCollector.collect)
    L.Trainer.__init__ = with_callback(L.Trainer.__init__, RECORDER)
    for name in names:
        run_plan(Path(out_dir), int(devices), name)


if __name__ == "__main__":
    main()
