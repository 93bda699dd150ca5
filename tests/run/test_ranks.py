"""Failures across processes: collectives time out after `distributed.timeout_s`, and what a rank reports names
its phase and where the other ranks were (the end-to-end runs are in tests/run/test_rank_failures.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest

from clipo.builders import build_strategy
from tests.conftest import TINY_OVERRIDES, compose_config, fresh_shell_env


@pytest.mark.parametrize("strategy", ["ddp", "deepspeed_zero2", "fsdp", "auto"])
def test_every_strategy_gets_the_collective_timeout(tmp_path, strategy):
    # before: Lightning's default of 30 minutes, so a hung collective on CPU processes waited half an hour
    base = [*TINY_OVERRIDES, f"strategy={strategy}", "trainer.devices=2", "trainer.accelerator=cpu"]
    if strategy.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    assert build_strategy(compose_config(base, tmp_path))._timeout == timedelta(seconds=300)  # auto on CPU
    assert build_strategy(compose_config([*base, "distributed.timeout_s=42"], tmp_path))._timeout == timedelta(seconds=42)
    assert build_strategy(compose_config([*TINY_OVERRIDES, "strategy=auto"], tmp_path)) == "auto"  # one process


TIMEOUT = textwrap.dedent("""
    import datetime, json, os, sys, time, types
    import torch, torch.distributed as dist
    from clipo.run import ranks
    from clipo.run.crash_report import crash_report

    rank, run_dir = int(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=2))
    ranks.set_phase("RL step 2", 1)
    dist.barrier()
    if rank == 1:
        with ranks.phase("reward slow"):
            time.sleep(6)  # stuck in its own code, far from any collective
        sys.exit(0)
    with ranks.phase("update"):
        try:
            dist.all_reduce(torch.ones(2))
        except RuntimeError as error:
            crash = types.SimpleNamespace(in_step=True, started=True, outcome=None)
            report = crash_report(error, 1, crash, run_dir, rank=0, world=2)
            print(json.dumps(report.__dict__), flush=True)
            os._exit(0)
""")


def test_a_timed_out_collective_names_this_ranks_phase_and_the_others(tmp_path):
    env = fresh_shell_env(MASTER_ADDR="127.0.0.1")
    ranks = [subprocess.Popen([sys.executable, "-c", TIMEOUT, str(rank), str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    (out, err), _ = [rank.communicate(timeout=120) for rank in ranks]
    report = json.loads(out.strip().splitlines()[-1]) if out.strip() else pytest.fail(err[-3000:])
    assert report["failed_rank"] == 0
    assert report["error"].startswith("rank 0: a collective in RL step 2: update timed out waiting for the other ranks")
    assert report["line"].startswith("training failed on rank 0: a collective in RL step 2: update timed out")
    assert "Last phases: rank 1: RL step 2: reward slow." in report["line"]
    assert report["what_to_do"].startswith("find why the other ranks did not reach this collective (their last "
                                           "phases: rank 1: RL step 2: reward slow); if they are only slower, raise "
                                           "distributed.timeout_s")
