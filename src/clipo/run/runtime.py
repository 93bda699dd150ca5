"""What the machine offers, decided before the Trainer is built: the precision plan and the thread count.

The decisions are pure functions of what was detected (CPU flags, CUDA capability, cgroup quota,
affinity, environment, the precision probe's measurement), so tests can hand them any machine;
`detect_*` and `resolve_precision` read the real one.
"""

from __future__ import annotations

import math
import os
import typing
from dataclasses import dataclass
from pathlib import Path

from clipo.run.precision import PrecisionPlan, choose_plan
from clipo.run.precision_probe import Probe, ProbeShapes, measure


@dataclass(frozen=True)
class Choice:
    """A decided setting and the reason, in words, for the run's first lines and summary.json."""

    value: typing.Any
    reason: str


def resolve_precision(cfg: typing.Any, processes: int = 1, sharded: bool = False) -> PrecisionPlan:
    """`trainer.precision` as a `PrecisionPlan` for this machine and this run (`clipo.run.precision`) of `processes`
    training processes (`sharded`: DeepSpeed or FSDP holds the policy's weights); `auto` on a CPU with bf16
    units measures the run's own model and shapes (`clipo.run.precision_probe`)."""
    trainer = cfg.trainer
    return choose_plan(trainer.get("precision", "auto"), str(trainer.get("accelerator", "auto")), detect_cuda_bf16(),
                       detect_cpu_flags(), processes, sharded, lambda: _probe(cfg, processes))


def _probe(cfg: typing.Any, processes: int) -> Probe:
    from clipo.builders import plain
    from clipo.models import load_config

    rollouts = cfg.data.prompts_per_step * cfg.rollout.group_size // max(1, processes)
    budget = cfg.ppo.get("max_tokens_per_micro_batch")
    shapes = ProbeShapes.of_run(rollouts, budget if isinstance(budget, int) else 2048)
    return measure(load_config(**plain(cfg.model)), shapes)


def detect_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first processor's feature flags (x86 `flags`, arm `Features`); empty where unreadable."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def detect_cuda_bf16() -> bool | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return bool(torch.cuda.is_bf16_supported())


def cgroup_cpu_limit(cgroup_root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs allowed by the cgroup's CPU quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), or None without a quota."""
    own = ["/"]
    try:
        for line in proc_cgroup.read_text().splitlines():
            hierarchy, controllers, path = line.split(":", 2)
            if hierarchy == "0" or "cpu" in controllers.split(","):
                own.insert(0, path)
    except (OSError, ValueError):
        pass
    for path in own:
        for folder in (cgroup_root / path.lstrip("/"), cgroup_root / "cpu" / path.lstrip("/")):
            limit = _read_quota(folder)
            if limit is not None:
                return limit
    return None


def _read_quota(folder: Path) -> float | None:
    try:
        if (folder / "cpu.max").is_file():
            quota, period = (folder / "cpu.max").read_text().split()[:2]
        elif (folder / "cpu.cfs_quota_us").is_file():
            quota = (folder / "cpu.cfs_quota_us").read_text().strip()
            period = (folder / "cpu.cfs_period_us").read_text().strip()
        else:
            return None
        if quota in ("max", "-1"):
            return None
        return int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def choose_threads(env: typing.Mapping[str, str], affinity: int, cgroup_limit: float | None,
                   processes: int = 1) -> Choice:
    """torch's intra-op threads: OMP_NUM_THREADS when set, else the cores this process may run on
    (its CPU affinity, capped by the cgroup quota rounded up), shared among `processes` training
    processes on this machine's CPUs (CPU data parallelism)."""
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return Choice(int(omp), f"OMP_NUM_THREADS={omp}")
    if cgroup_limit is not None and math.ceil(cgroup_limit) < affinity:
        cores, reason = math.ceil(cgroup_limit), f"cgroup CPU quota {cgroup_limit:g} CPUs ({affinity} in affinity)"
    else:
        quota = "" if cgroup_limit is None else f", cgroup quota {cgroup_limit:g}"
        cores, reason = affinity, f"{affinity} CPUs in the process's affinity{quota}"
    if processes > 1:
        reason += f", shared by {processes} processes"
    return Choice(max(1, cores // max(1, processes)), reason)


def detect_threads(processes: int = 1) -> Choice:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return choose_threads(os.environ, affinity, cgroup_cpu_limit(), processes)
