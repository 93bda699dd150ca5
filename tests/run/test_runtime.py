"""Threads and CPU flags read from the hardware (mocked cgroups, affinity, /proc/cpuinfo) and the run's facts; the
precision plan: test_precision.py."""

import pytest

from clipo.config import ConfigError, validate_config
from clipo.run.facts import StrategyKind, detect_facts
from clipo.run.runtime import cgroup_cpu_limit, choose_threads, detect_cpu_flags
from tests.conftest import compose_config


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert detect_cpu_flags(cpuinfo) == {"fpu", "avx512f", "avx512_bf16", "amx_bf16"}
    assert detect_cpu_flags(tmp_path / "missing") == frozenset()


def test_unknown_precision_fails_before_the_model_loads(tmp_path):
    cfg = compose_config(["model=tiny", "trainer.precision=bf16mixed"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="trainer.precision='bf16mixed' is unknown; choose auto"):
        validate_config(cfg)
    validate_config(compose_config(["model=tiny"], output_dir=tmp_path))  # auto is the default and valid


def _cgroup(tmp_path, files: dict[str, str], own: str = "0::/\n"):
    tmp_path.mkdir(parents=True)
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "proc_cgroup").write_text(own)
    return cgroup_cpu_limit(tmp_path / "sys", tmp_path / "proc_cgroup")


def test_cgroup_quota_v2_v1_and_none(tmp_path):
    assert _cgroup(tmp_path / "v2", {"sys/cpu.max": "250000 100000\n"}) == 2.5
    assert _cgroup(tmp_path / "v2max", {"sys/cpu.max": "max 100000\n"}) is None
    # v2 inside a nested cgroup: the process's own folder is read first
    nested = {"sys/cpu.max": "max 100000\n", "sys/job/7/cpu.max": "100000 100000\n"}
    assert _cgroup(tmp_path / "nested", nested, own="0::/job/7\n") == 1.0
    v1 = {"sys/cpu/cpu.cfs_quota_us": "300000\n", "sys/cpu/cpu.cfs_period_us": "100000\n"}
    assert _cgroup(tmp_path / "v1", v1, own="3:cpu,cpuacct:/\n") == 3.0
    unlimited = {"sys/cpu/cpu.cfs_quota_us": "-1\n", "sys/cpu/cpu.cfs_period_us": "100000\n"}
    assert _cgroup(tmp_path / "v1none", unlimited, own="3:cpu,cpuacct:/\n") is None
    assert _cgroup(tmp_path / "nothing", {}) is None


@pytest.mark.parametrize(
    ("env", "affinity", "quota", "expected"),
    [
        ({}, 64, 2.0, 2),  # a 2-CPU container on a 64-core host: not 64 threads fighting for 2 CPUs
        ({}, 64, 2.5, 3),  # a fractional quota rounds up
        ({}, 4, None, 4),  # taskset / SLURM --cpus-per-task: the affinity
        ({}, 4, 16.0, 4),  # the smaller of the two
        ({"OMP_NUM_THREADS": "3"}, 64, 2.0, 3),  # the user's setting wins
        ({"OMP_NUM_THREADS": "junk"}, 8, None, 8),
    ],
)
def test_threads_match_the_usable_cores(env, affinity, quota, expected):
    choice = choose_threads(env, affinity, quota)
    assert choice.value == expected
    assert ("OMP_NUM_THREADS" in choice.reason) == ("OMP_NUM_THREADS" in env and env["OMP_NUM_THREADS"].isdigit())


def test_cpu_data_parallel_processes_share_the_cores():
    assert choose_threads({}, 8, None, processes=2).value == 4  # 2 gloo processes: 4 threads each, not 8
    assert choose_threads({}, 8, 3.0, processes=2).value == 1
    assert choose_threads({}, 2, None, processes=4).value == 1
    assert "shared by 2 processes" in choose_threads({}, 8, None, processes=2).reason


def test_detected_threads_use_affinity_and_cgroup(monkeypatch):
    import clipo.run.runtime as runtime

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: 1.5)
    assert runtime.detect_threads().value == 2
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: None)
    assert runtime.detect_threads().value == 6


def test_train_turns_the_tokenizers_pool_off_and_resolves_auto_first(monkeypatch, tmp_path):
    import os

    from clipo.run.facts import apply_facts

    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)  # train() called from Python, not __main__
    cfg = compose_config(["model=tiny"], output_dir=tmp_path)
    facts = apply_facts(cfg, detect_facts(cfg))
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    assert cfg.trainer.precision == facts.precision.lightning == facts.runtime()["precision_lightning"]
    assert facts.precision.lightning in ("32-true", "bf16-mixed")


@pytest.mark.parametrize("overrides,processes,here,strategy", [
    ([], 1, 1, "single"), (["trainer.accelerator=cpu", "trainer.devices=2"], 2, 2, "ddp"),
    (["trainer.accelerator=cpu", "trainer.devices=2", "strategy=deepspeed_zero3"], 2, 2, "deepspeed_zero3"),
    (["trainer.accelerator=cpu", "trainer.devices=2", "trainer.num_nodes=2", "strategy=fsdp"], 4, 2, "fsdp"),
    (["trainer=gpu", "trainer.devices=8", "strategy=deepspeed_zero2_offload"], 8, 1, "deepspeed_zero2"),
])  # fmt: skip
def test_the_run_facts_are_found_once_from_the_config(monkeypatch, tmp_path, overrides, processes, here, strategy):
    import clipo.run.runtime as runtime

    for variable in ("WORLD_SIZE", "OMP_NUM_THREADS"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: None)
    facts = detect_facts(compose_config(["model=tiny", *overrides], output_dir=tmp_path))
    assert (facts.processes, facts.processes_here, facts.strategy) == (processes, here, StrategyKind(strategy))
    assert facts.engine is None  # chosen once the policy has loaded
    # each process of CPU data parallelism gets its share of the 8 cores; a GPU process drives its own device
    assert facts.threads.value == 8 // here
