"""One live run per run folder (`clipo.run.run_lock`): a second run into a live run's folder is refused before it
writes anything there; a lock whose run has ended is taken over. Before: two runs in one hydra.run.dir both exited
0 with interleaved logs (every CSV step twice, 64 rollouts a step)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clipo.run.lock_owner import LOCK_FILE, read_owner, this_process
from clipo.run.run_lock import RunFolderInUse, acquire, hold_run_folder, release
from tests.conftest import fresh_shell_env
from tests.conftest import tiny_parity_config as _config

REPO = Path(__file__).resolve().parents[2]
# a process that takes the folder's lock and keeps it until killed (prints "locked" once it holds it)
HOLDER = "import sys, time; from clipo.run.run_lock import acquire; acquire(sys.argv[1]); print('locked', flush=True); time.sleep(300)"


@pytest.fixture
def holder(tmp_path):
    """Start a live run's stand-in holding `tmp_path / 'run'`; yields its process (killed at the end)."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True,
                               env=fresh_shell_env())
    assert process.stdout.readline().strip() == "locked"
    yield process
    process.kill()
    process.wait()


def test_a_run_takes_and_gives_back_its_folder(tmp_path):
    with hold_run_folder(tmp_path):
        owner = read_owner(tmp_path)
        assert owner["pid"] == os.getpid() and owner["command"]
        assert acquire(tmp_path) is False  # this process holds it already: a no-op
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_live_runs_folder_is_refused_and_taken_over_once_it_ended(holder, tmp_path, caplog):
    run = tmp_path / "run"
    with pytest.raises(RunFolderInUse, match=rf"the run folder {run} is in use by a live run \(pid {holder.pid} on .*"
                                             rf"Wait for it to end or stop it \(kill {holder.pid}.*another hydra.run.dir"):
        acquire(run)
    holder.kill()  # SIGKILL: no cleanup, the lock stays behind
    holder.wait()
    assert read_owner(run)["pid"] == holder.pid
    assert acquire(run) is True and read_owner(run)["pid"] == os.getpid()
    assert f"took over the lock of {run}: that run has ended (pid {holder.pid}" in caplog.text
    release(run)


def test_a_reused_pid_is_not_the_owner_and_another_host_is_not_checked(tmp_path, monkeypatch):
    mine = this_process()
    (tmp_path / LOCK_FILE).write_text(json.dumps({**mine, "proc_start": (mine["proc_start"] or 0) + 1}))
    if mine["proc_start"] is not None:  # Linux: the same pid with another start time is another process
        assert acquire(tmp_path) is True
    release(tmp_path)
    (tmp_path / LOCK_FILE).write_text(json.dumps({**mine, "host": "node-17", "slurm_job": "4242"}))
    with pytest.raises(RunFolderInUse, match=r"locked by a run on another host.*If that run has ended \(e.g. its node "
                                             r"failed\), delete .*\.clipo\.lock"):
        acquire(tmp_path)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # the same SLURM job, requeued: its own earlier incarnation
    assert acquire(tmp_path) is True
    release(tmp_path)


def test_only_rank_zero_locks(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert acquire(tmp_path) is False and not (tmp_path / LOCK_FILE).exists()


RACER = """import sys, time
from pathlib import Path
from clipo.run.run_lock import RunFolderInUse, acquire
print("ready", flush=True)
while not Path(sys.argv[2]).exists():
    time.sleep(0.001)
try:
    acquire(sys.argv[1]); print("took", flush=True); time.sleep(5)
except RunFolderInUse:
    print("refused", flush=True)
"""


def test_of_runs_starting_at_once_on_a_stale_lock_exactly_one_takes_it(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_FILE).write_text(json.dumps({**this_process(), "pid": int(dead.stdout), "proc_start": None}))
    go = tmp_path / "go"
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), str(go)], stdout=subprocess.PIPE,
                               text=True, env=fresh_shell_env()) for _ in range(4)]
    assert [r.stdout.readline().strip() for r in racers] == ["ready"] * 4  # all wait for the start
    go.touch()
    outcomes = sorted(r.stdout.readline().strip() for r in racers)
    for racer in racers:
        racer.kill()
        racer.wait()
    assert outcomes == ["refused", "refused", "refused", "took"]


def test_a_second_run_into_a_live_runs_folder_exits_2_before_writing_there(holder, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, str(REPO / "src" / "clipo" / "train.py"), "model=tiny", f"hydra.run.dir={run}"]
    result = subprocess.run(command, capture_output=True, text=True, env=fresh_shell_env(HF_HUB_OFFLINE="1"),
                            timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"clipo: the run folder {run} is in use by a live run (pid {holder.pid}" in result.stderr
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # no .hydra/, no log: the live run's files untouched


def test_train_refuses_a_locked_folder_before_the_model_loads_and_releases_its_own(holder, parity_verifier, tmp_path,
                                                                                   monkeypatch):
    import clipo.run.assembly
    import clipo.train

    build_module = clipo.run.assembly.build_module
    monkeypatch.setattr(clipo.run.assembly, "build_module", lambda *args: pytest.fail("the model must not load"))
    cfg = _config(tmp_path / "run", "data.val=null", "trainer.max_steps=1")
    with pytest.raises(RunFolderInUse, match="in use by a live run"):
        clipo.train.train(cfg)
    monkeypatch.setattr(clipo.run.assembly, "build_module", build_module)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    clipo.train.train(_config(tmp_path / "run", "data.val=null", "trainer.max_steps=1"))  # the stale lock is taken over
    assert not (tmp_path / "run" / LOCK_FILE).exists()  # and given back at the end
