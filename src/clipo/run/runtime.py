"""What the machine offers, decided before the Trainer is built: the precision and the thread count.

The decisions are pure functions of what was detected (CPU flags, CUDA capability, cgroup quota,
affinity, environment), so tests can hand them any machine; `detect_*` read the real one.
"""

from __future__ import annotations

import math
import os
import typing
from dataclasses import dataclass
from pathlib import Path

# the precisions Lightning's Trainer accepts (as strings; the config may give 32 or 16 as integers)
LIGHTNING_PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true",
                        "bf16-mixed", "32-true", "64-true", "64", "32", "16", "bf16")
PRECISIONS = ("auto", *LIGHTNING_PRECISIONS)
# CPU features with native bf16 matrix products; without them bf16 autocast is emulated and slower
# than fp32 (an Ice Lake Xeon with plain AVX-512: 68 GFLOP/s in bf16 against 355 in fp32)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Choice:
    """A decided setting and the reason, in words, for the run's first lines and summary.json."""

    value: typing.Any
    reason: str


def choose_precision(requested: typing.Any, accelerator: str, cuda_bf16: bool | None, cpu_flags: frozenset[str]) -> Choice:
    """`trainer.precision`, with `auto` resolved: bf16-mixed on a CUDA device with bf16 and on a CPU with
    AVX-512 BF16 or AMX, else 32. 16-mixed is never chosen (it needs loss scaling and can overflow).

    accelerator: trainer.accelerator (auto, cpu, gpu, cuda, ...); cuda_bf16: None when no CUDA device is
    visible, else whether it supports bf16; cpu_flags: the `flags` of /proc/cpuinfo.
    """
    if str(requested) != "auto":
        return Choice(requested, f"trainer.precision={requested} was set explicitly")
    on_cuda = cuda_bf16 is not None and accelerator in ("auto", "gpu", "cuda")
    if on_cuda:
        if cuda_bf16:
            return Choice("bf16-mixed", "auto: the CUDA device supports bf16")
        return Choice("32", "auto: the CUDA device has no bf16 (16-mixed is never chosen automatically)")
    if accelerator not in ("auto", "cpu"):
        return Choice("32", f"auto: trainer.accelerator={accelerator} is neither CPU nor CUDA")
    native = [flag for flag in CPU_BF16_FLAGS if flag in cpu_flags]
    if native:
        return Choice("bf16-mixed", f"auto: the CPU has native bf16 ({', '.join(native)})")
    return Choice("32", "auto: the CPU has neither AVX-512 BF16 nor AMX, so bf16 would be emulated and slower")


def resolve_precision(trainer_cfg: typing.Mapping[str, typing.Any]) -> Choice:
    """`choose_precision` for this machine, from a `trainer:` config block."""
    return choose_precision(trainer_cfg.get("precision", "auto"), str(trainer_cfg.get("accelerator", "auto")),
                            detect_cuda_bf16(), detect_cpu_flags())


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
