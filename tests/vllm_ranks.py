"""Helper script of tests/rollout/test_vllm_ranks.py: trainings whose rollouts each rank samples with its own
vLLM engine (`rollout.engine=vllm`, model=tiny with vLLM's head size, the parity verifier), one after another
in the same processes, each rank writing what it sampled and logged.

    python tests/vllm_ranks.py OUT_DIR DEVICES PLAN [PLAN ...] [-- OVERRIDE ...]      (PLANS below)
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from omegaconf import open_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipo.compose import compose  # noqa: E402
from clipo.distributed import world  # noqa: E402
from clipo.registry import VERIFIERS  # noqa: E402
from clipo.rollout.vllm_weights import named_weights  # noqa: E402
from clipo.train import train  # noqa: E402
from tests.conftest import TINY_OVERRIDES, ParityVerifier, with_callback  # noqa: E402

EMBEDDING = "model.embed_tokens.weight"
VLLM = ["rollout.engine=vllm", "model.tiny.num_attention_heads=2", "model.tiny.num_key_value_heads=1"]
# name: (strategy, extra overrides)
PLANS = {
    "ddp": ("ddp", []),
    "zero2": ("deepspeed_zero2", []),
    "zero3": ("deepspeed_zero3", ["+strategy.param_persistence_threshold=0"]),  # every parameter partitioned
    "fsdp": ("fsdp", []),
    "ddp-async": ("ddp", ["rollout.max_staleness=1", "trainer.max_steps=3"]),
    # on a vLLM server given by `-- rollout.vllm_server.url=...` (both ranks send to it; both gather the shards,
    # rank 0 pushes)
    "server-async": ("deepspeed_zero3", ["+strategy.param_persistence_threshold=0", "rollout.engine=vllm_server",
                                         "rollout.max_staleness=1", "trainer.max_steps=3"]),
}


class RecordSteps(L.Callback):
    """After each step: this rank's prompts, and the embedding as the push yields it (whole, from any shards)."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        weights = {name: tensor.clone() for name, tensor in named_weights(module.policy) if name == EMBEDDING}
        self.steps.append({"prompts": [r["messages"][-1]["content"] for r in batch], "embedding": weights[EMBEDDING]})


def run_plan(out_dir: Path, devices: int, name: str, overrides: list[str]) -> None:
    strategy, extra = PLANS[name]
    extra = [*extra, *overrides]
    backend = ["strategy.process_group_backend=gloo"] if devices > 1 else []
    cfg = compose([*TINY_OVERRIDES, *VLLM, "trainer.accelerator=cpu", f"trainer.devices={devices}",
                   f"strategy={strategy}", *backend, "data.prompts_per_step=4", "data.val=null", "logger=none",
                   "optimizer.lr=1e-2", *extra], out_dir / name)  # fmt: skip
    with open_dict(cfg):
        cfg.verifier = {"name": "parity"}
    recorder = RecordSteps()
    L.Trainer.__init__ = with_callback(L.Trainer.__init__, recorder)
    metrics, objects = train(cfg)
    engine = getattr(objects["module"].collector.engine, "engine", objects["module"].collector.engine)
    rank = world()[0]
    torch.save({"history": objects["summary"].history if objects["summary"] else [], "steps": recorder.steps,
                "pushes": engine.pushes, "version": engine.version}, out_dir / f"{name}.rank{rank}.pt")  # fmt: skip


def main() -> None:
    args = [arg for arg in sys.argv[1:] if not arg.startswith("hydra.")]  # Lightning adds Hydra's for rank 1
    (out_dir, devices, *names), overrides = (args[: args.index("--")], args[args.index("--") + 1 :]) if "--" in args \
        else (args, [])  # fmt: skip
    VERIFIERS._entries["parity"] = ParityVerifier
    init = L.Trainer.__init__
    for name in names:
        L.Trainer.__init__ = init
        run_plan(Path(out_dir), int(devices), name, overrides)


if __name__ == "__main__":
    main()
