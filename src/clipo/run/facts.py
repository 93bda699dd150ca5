"""The run's facts, found once at the start of `train()` and read from there: how many processes train
(and share this machine's CPUs), on which device kind, under which strategy kind, in which precision with
how many threads, in which contrastive mode, and (once the policy has loaded) with which rollout engine,
each with the reason it was chosen. The run's first lines and summary.json's `runtime` say them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import torch
from omegaconf import open_dict

from clipo.contrastive.modes import ContrastiveMode
from clipo.run.console import quiet_third_party_output
from clipo.run.precision import PrecisionPlan
from clipo.run.runtime import Choice, detect_threads, resolve_precision

log = logging.getLogger(__name__)


class StrategyKind(str, Enum):
    """What the strategy does to the policy's parameters (`strategy=`), whatever class implements it."""

    SINGLE = "single"  # one process
    DDP = "ddp"  # whole parameters on every rank, gradients all-reduced
    ZERO2 = "deepspeed_zero2"  # whole parameters, DeepSpeed's engine (it clips and steps)
    ZERO3 = "deepspeed_zero3"  # parameters partitioned, gathered on every module call
    FSDP = "fsdp"  # parameters sharded as DTensors, gathered per FSDP module

    @classmethod
    def of(cls, strategy_name: str, processes: int) -> StrategyKind:
        """The kind of `strategy=<name>` (the `_offload` variants are their stage's) in a run of `processes`;
        a strategy of the user's own (`_target_`) names the kind it behaves like."""
        name = str(strategy_name).removesuffix("_offload")
        if name in ("auto", "ddp"):
            return cls.DDP if processes > 1 else cls.SINGLE
        if name not in {kind.value for kind in cls}:
            raise ValueError(f"strategy.name={strategy_name!r} is not a strategy kind clipo knows (auto, ddp, "
                             "deepspeed_zero2, deepspeed_zero3, fsdp, and the _offload variants): a strategy of your "
                             "own sets `name:` to the one whose parameters it holds alike (ddp: whole on every rank)")
        return cls(name)

    @property
    def deepspeed(self) -> bool:
        return self in (StrategyKind.ZERO2, StrategyKind.ZERO3)

    @property
    def sharded_parameters(self) -> bool:
        """Parameters are shards between calls: generation gathers them, exports consolidate them."""
        return self in (StrategyKind.ZERO3, StrategyKind.FSDP)

    @property
    def writes_folders(self) -> bool:
        """Checkpoints are the strategy's own sharded folders (not clipo's atomic single file)."""
        return self.deepspeed or self is StrategyKind.FSDP


@dataclass(frozen=True)
class RunFacts:
    processes: int  # training processes over all nodes
    processes_here: int  # of them, those sharing this machine's CPUs (CPU data parallelism)
    device: str  # "cuda" or "cpu"
    strategy: StrategyKind
    contrastive: ContrastiveMode
    precision: PrecisionPlan  # per phase: sampling, training, how the policy is held (`clipo.run.precision`)
    threads: Choice
    engine: Choice | None = None  # decided once the policy has loaded (`clipo.builders.build_engine`)

    def with_engine(self, engine: Choice) -> RunFacts:
        return replace(self, engine=engine)

    def runtime(self) -> dict[str, Any]:
        """summary.json's `runtime`: each decision and its reason."""
        out = {**self.precision.as_dict(), "threads": self.threads.value, "threads_reason": self.threads.reason,
               "processes": self.processes, "device": self.device, "strategy": self.strategy.value,
               "contrastive_mode": self.contrastive.value}
        if self.engine is not None:
            out |= {"engine": self.engine.value, "engine_reason": self.engine.reason}
        return out


def detect_facts(cfg: Any) -> RunFacts:
    """The facts of the run `cfg` describes on this machine (nothing is set: see `apply_facts`)."""
    trainer = cfg.get("trainer") or {}
    processes = training_processes(trainer)
    device = training_device(trainer)
    here = local_devices(trainer) if device == "cpu" else 1
    strategy = StrategyKind.of((cfg.get("strategy") or {}).get("name", "auto"), processes)
    return RunFacts(
        processes=processes,
        processes_here=here,
        device=device,
        strategy=strategy,
        contrastive=ContrastiveMode.resolve(cfg.loss.name, cfg.contrastive.mode),
        precision=resolve_precision(cfg, processes, sharded=strategy.writes_folders),  # DeepSpeed, FSDP: no copy
        threads=detect_threads(here),
    )


def training_processes(trainer_cfg: Any) -> int:
    """Processes the run trains in: the launcher's WORLD_SIZE, else trainer.devices x trainer.num_nodes."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    return local_devices(trainer_cfg) * int(trainer_cfg.get("num_nodes", 1) or 1)


def local_devices(trainer_cfg: Any) -> int:
    """trainer.devices as a count of processes on one node (a list of device ids counts its length)."""
    devices = trainer_cfg.get("devices", 1)
    devices = len(devices) if isinstance(devices, (list, tuple)) else devices
    return devices if isinstance(devices, int) and devices > 0 else 1


def training_device(trainer_cfg: Any) -> str:
    """The device kind the policy trains on ("cuda" or "cpu"), from `trainer.accelerator`."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    cuda = accelerator in ("gpu", "cuda") or accelerator == "auto" and torch.cuda.is_available()
    return "cuda" if cuda else "cpu"


def apply_facts(cfg: Any, facts: RunFacts) -> RunFacts:
    """Act on the run's facts before the Trainer is built (the precision into the trainer's config, torch's
    threads, the tokenizers' pool off: it would compete with torch for the same cores) and say them."""
    quiet_third_party_output()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(facts.threads.value)
    with open_dict(cfg):
        cfg.trainer.precision = facts.precision.lightning
    for line in facts.precision.lines():
        log.info(line)
    log.info("torch threads %d (%s); tokenizers parallelism off", facts.threads.value, facts.threads.reason)
    return facts
