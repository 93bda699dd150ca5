"""Checkpoint and resume: the head, its optimizer, the warm-up counter and the RNG come back;
checkpoints are written atomically and the final step is always kept."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clipo.run.checkpointing import AtomicCheckpointIO
from clipo.train import train
from tests.conftest import tiny_parity_config as _config

REPO = Path(__file__).resolve().parents[2]


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_resumed_run_matches_an_uninterrupted_one(parity_verifier, tmp_path):
    # max_steps counts RL steps: 1 head-only step (warm-up 2: the policy first updates at RL step 2)
    # + 3 policy updates
    overrides = ["trainer.max_steps=4", "data.val=null", "contrastive.head_warmup_steps=2"]
    _, full = train(_config(tmp_path / "full", *overrides))

    _config_first = _config(tmp_path / "first", *overrides)
    _config_first.trainer.max_steps = 2  # the first run stops after RL step 2 (1 head-only + 1 policy update)
    _, first = train(_config_first)
    checkpoint = tmp_path / "first" / "checkpoints" / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["clipo"]["rl_step"] == saved["global_step"] == 2 and saved["clipo"]["head_pooler_optimizer"] is not None

    _, resumed = train(_config(tmp_path / "resumed", *overrides, f"ckpt_path={checkpoint}"))
    full_module, resumed_module = full["module"], resumed["module"]
    assert resumed_module.rl_step == full_module.rl_step == 4  # 1 warm-up step + 3 policy updates
    head_steps = lambda m: [s["step"] for s in m.head_step.optimizer.state_dict()["state"].values()]  # noqa: E731
    assert head_steps(resumed_module) == head_steps(full_module)
    for name, value in _params(full_module).items():
        torch.testing.assert_close(_params(resumed_module)[name], value, rtol=0, atol=0, msg=name)
    # the summary's history is part of the checkpoint too, so it reads as one run
    rewards = lambda run: [row["train/reward"] for row in run["summary"].history]  # noqa: E731
    assert rewards(resumed) == rewards(full) and len(rewards(full)) == 4


# every step checkpointed, so a SIGKILL finds a recent last.ckpt; the weights do not depend on it
SIX_STEPS = ["trainer.max_steps=6", "data.val=null", "callbacks.model_checkpoint.every_n_train_steps=1",
             "callbacks.model_checkpoint.save_top_k=-1"]

# no periodic checkpoints: what the stopped runs keep is the stop's own save
STOP_OVERRIDES = ["trainer.max_steps=6", "data.val=null", "callbacks.model_checkpoint.every_n_train_steps=100"]
SLURM = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "clipo", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0",
         "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "127.0.0.1"}


@pytest.fixture(scope="module")
def six_step_run(tmp_path_factory):
    """The uninterrupted run every stopped-and-resumed run must equal (shared by the tests below)."""
    from tests.conftest import ParityVerifier

    with pytest.MonkeyPatch.context() as patch:
        from clipo.registry import VERIFIERS

        patch.setitem(VERIFIERS._entries, "parity", ParityVerifier)
        _, full = train(_config(tmp_path_factory.mktemp("full"), *SIX_STEPS))
    return _params(full["module"])


def _wait_for(condition, run_dir: Path, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert not (run_dir / "exit_code").exists(), f"{run_dir.name} ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what} in {run_dir.name}"
        time.sleep(0.05)


def _steps_scored(run_dir: Path) -> int:
    path = run_dir / "scored.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _signal(run_dir: Path, signum: int) -> None:
    _wait_for(lambda: (run_dir / "pid").exists(), run_dir, "its start")
    os.kill(int((run_dir / "pid").read_text()), signum)


@pytest.fixture(scope="module")
def stopped_runs(tmp_path_factory):
    """Train runs stopped after two steps, all at once (tests/stoppable_runs.py forks them from one
    interpreter): `killed` by SIGKILL, one per stop signal, `sigint_twice` with a second Ctrl-C once the
    first is acknowledged, and `slurm` by SIGUSR1 under SLURM variables with a fake `scontrol` on PATH
    that records its arguments. Returns the base folder and each run's exit status."""
    base = tmp_path_factory.mktemp("stopped")
    (base / "bin").mkdir()
    (base / "bin" / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {base / 'scontrol.txt'}\n")
    (base / "bin" / "scontrol").chmod(0o755)
    slurm_env = {**SLURM, "PATH": f"{base / 'bin'}:{os.environ['PATH']}"}
    # sigint_twice comes last and scores slowly (4 s a step), so its step is still running when the
    # second Ctrl-C follows the first (a fast step could end, save and exit in between)
    plan = {"killed": (signal.SIGKILL, SIX_STEPS, None), "sigterm": (signal.SIGTERM, STOP_OVERRIDES, None),
            "sigint": (signal.SIGINT, STOP_OVERRIDES, None), "sigusr1": (signal.SIGUSR1, STOP_OVERRIDES, None),
            "slurm": (signal.SIGUSR1, STOP_OVERRIDES, slurm_env),
            "sigint_twice": (signal.SIGINT, STOP_OVERRIDES, {"STOPPABLE_SCORE_SECONDS": "4"})}
    runs = [{"out": str(base / name), "overrides": overrides, "env": env} for name, (_, overrides, env) in plan.items()]
    launcher = subprocess.Popen([sys.executable, str(REPO / "tests" / "stoppable_runs.py"), json.dumps(runs)])
    try:
        for name, (signum, _, _) in plan.items():
            _wait_for(lambda: _steps_scored(base / name) >= 2, base / name, "its second step")
            _signal(base / name, signum)
        twice = base / "sigint_twice"
        _wait_for(lambda: "received SIGINT" in (twice / "output.txt").read_text(), twice, "the first Ctrl-C")
        _signal(twice, signal.SIGINT)
        sent = time.time()
        _wait_for(lambda: (twice / "exit_code").exists(), base, "the second Ctrl-C", 60)
        forced_exit_s = time.time() - sent
        launcher.wait(timeout=300)
    finally:  # a failed wait leaves nothing running
        for name in plan:
            if (base / name / "pid").exists() and not (base / name / "exit_code").exists():
                os.kill(int((base / name / "pid").read_text()), signal.SIGKILL)
        launcher.kill()
    codes = {name: int((base / name / "exit_code").read_text()) for name in plan}
    return base, codes, forced_exit_s


def _assert_resumes_to(run_dir: Path, full: dict[str, torch.Tensor], *overrides: str) -> None:
    _, resumed = train(_config(run_dir, *SIX_STEPS, *overrides))
    assert resumed["trainer"].global_step == 6
    for name, value in full.items():
        torch.testing.assert_close(_params(resumed["module"])[name], value, rtol=0, atol=0, msg=name)


def test_run_killed_mid_training_resumes_exactly(parity_verifier, six_step_run, stopped_runs, tmp_path):
    """SIGKILL after a few steps, resume from last.ckpt: the same weights as a run never stopped."""
    base, codes, _ = stopped_runs
    killed = base / "killed" / "checkpoints" / "last.ckpt"
    assert codes["killed"] == -signal.SIGKILL
    saved = torch.load(killed, weights_only=True)  # never a half-written file
    assert 1 <= saved["global_step"] < 6  # saved every step; the kill may come during a save
    _assert_resumes_to(tmp_path / "resumed", six_step_run, f"ckpt_path={killed}")


@pytest.mark.parametrize("name", ["sigterm", "sigint", "sigusr1"])
def test_a_stop_signal_checkpoints_and_resumes_exactly(parity_verifier, six_step_run, stopped_runs, name):
    base, codes, _ = stopped_runs
    run_dir, signum = base / name, {"sigterm": signal.SIGTERM, "sigint": signal.SIGINT, "sigusr1": signal.SIGUSR1}[name]
    output = (run_dir / "output.txt").read_text()
    assert codes[name] == 128 + signum, output[-3000:]
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert 2 <= saved["global_step"] < 6  # the step the signal came in was finished and saved, no more
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["signal"] == signal.Signals(signum).name
    assert len(summary["history"]) == saved["global_step"] and summary["checkpoint"].endswith("last.ckpt")
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["last.ckpt"]  # no partial file
    assert "Traceback" not in output
    _assert_resumes_to(run_dir, six_step_run, "ckpt_path=last")  # in the same run folder, as a user would


def test_a_second_ctrl_c_exits_at_once(stopped_runs):
    base, codes, forced_exit_s = stopped_runs
    run_dir = base / "sigint_twice"
    assert codes["sigint_twice"] == 128 + signal.SIGINT
    assert forced_exit_s < 3.5  # at once: before the 4 s scoring of the step it interrupted was over
    assert not (run_dir / "summary.json").exists()
    leftovers = [p.name for p in (run_dir / "checkpoints").iterdir()] if (run_dir / "checkpoints").exists() else []
    assert leftovers in ([], ["last.ckpt"]), leftovers  # no partial file; a complete one if the save had finished
    if leftovers:
        torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def test_slurm_requeue_signal_saves_at_the_step_end_and_requeues(parity_verifier, six_step_run, stopped_runs,
                                                                   monkeypatch):
    """Under SLURM (auto-requeue, Lightning's default) SIGUSR1 ends the step, then Lightning's handler
    writes its hpc checkpoint and runs `scontrol requeue <job>`; the requeued job, started again with
    ckpt_path=null, resumes from that checkpoint."""
    base, codes, _ = stopped_runs
    run_dir = base / "slurm"
    assert codes["slurm"] == 128 + signal.SIGUSR1, (run_dir / "output.txt").read_text()[-3000:]
    assert (base / "scontrol.txt").read_text().split() == ["requeue", "4242"]
    hpc = torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=True)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert hpc["global_step"] == last["global_step"] >= 2  # both at the end of the same step
    for key, value in {**SLURM, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517"}.items():
        monkeypatch.setenv(key, value)  # restored afterwards (Lightning's SLURM environment sets MASTER_*)
    _assert_resumes_to(run_dir, six_step_run)  # no ckpt_path: Lightning finds hpc_ckpt_1.ckpt itself


def test_final_step_is_checkpointed_between_periodic_saves(parity_verifier, tmp_path):
    overrides = ["trainer.max_steps=3", "data.val=null", "callbacks.model_checkpoint.every_n_train_steps=2"]
    train(_config(tmp_path / "default", *overrides))  # by default only last.ckpt is kept
    assert [p.name for p in (tmp_path / "default" / "checkpoints").iterdir()] == ["last.ckpt"]
    assert torch.load(tmp_path / "default" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    train(_config(tmp_path / "all", *overrides, "callbacks.model_checkpoint.save_top_k=-1"))
    folder = tmp_path / "all" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step_000002.ckpt"]
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 3


def test_an_interrupted_write_leaves_the_previous_checkpoint(parity_verifier, tmp_path, monkeypatch):
    overrides = ["data.val=null", "callbacks.model_checkpoint.every_n_train_steps=1", "callbacks.model_checkpoint.save_top_k=-1"]
    train(_config(tmp_path, *overrides, "trainer.max_steps=1"))
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    def crash_mid_write(obj, file, *args, **kwargs):  # part of the bytes reach the disk, then the write fails
        file.write(b"\0" * 1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("clipo.run.checkpointing.torch.save", crash_mid_write)
    with pytest.raises(OSError, match="No space left"):  # continue the run in the same folder, as ckpt_path=last does
        train(_config(tmp_path, *overrides, "trainer.max_steps=2", "ckpt_path=last"))
    assert last.read_bytes() == before
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt", "step_000001.ckpt"]  # no partial file


def test_atomic_io_replaces_the_target_in_one_step(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, tmp_path / "a" / "last.ckpt")
    io.save_checkpoint({"step": 2}, tmp_path / "a" / "last.ckpt")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["last.ckpt"]
    assert torch.load(tmp_path / "a" / "last.ckpt")["step"] == 2


class _CrashingParity:
    """`ParityVerifier` that raises in its `fail_at`-th call (3: RL step 3, after two completed steps)."""

    fail_at = 3

    def __init__(self, **options) -> None:
        from tests.conftest import ParityVerifier

        self.inner, self.calls = ParityVerifier(), 0

    def __call__(self, responses, ground_truths):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("verifier exploded")
        return self.inner(responses, ground_truths)

    def stats(self):
        return {}

    def close(self):
        pass


def test_a_crash_keeps_the_completed_steps_and_resumes_exactly(six_step_run, tmp_path, monkeypatch):
    """An exception in step 3 (no checkpoint since the start): last.ckpt holds steps 1-2 with the RNG and data
    position of step 3's start, summary.json records the crash, train.log the traceback, and a resume in the
    same folder ends where an uninterrupted run does. Before: no checkpoint, no summary.json, steps 1-2 lost."""
    from clipo.registry import VERIFIERS
    from tests.conftest import ParityVerifier

    monkeypatch.setitem(VERIFIERS._entries, "parity", _CrashingParity)
    run = tmp_path / "run"
    rarely = [o for o in SIX_STEPS if "every_n_train_steps" not in o] + ["callbacks.model_checkpoint.every_n_train_steps=100"]
    with pytest.raises(RuntimeError, match="verifier exploded") as error:
        train(_config(run, *rarely))
    line = error.value.__notes__[-1]  # what the console's last line says (main() logs it)
    assert line.startswith("training failed in RL step 3: ") and "verifier exploded" in line, line
    assert f"; the state after step 2 is saved in {run / 'checkpoints' / 'last.ckpt'}. To do: " in line
    assert line.endswith(f"then continue with hydra.run.dir={run} ckpt_path=last")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["crashed"] is True and "verifier exploded" in summary["error"]
    assert summary["step"] == 2 and len(summary["history"]) == 2
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    log = (run / "train.log").read_text()
    assert "Traceback (most recent call last)" in log and "RuntimeError: verifier exploded" in log
    monkeypatch.setitem(VERIFIERS._entries, "parity", ParityVerifier)
    _assert_resumes_to(run, six_step_run, "ckpt_path=last")  # saving every step now, not every 100
    assert not list((run / "checkpoints").glob("last-v*.ckpt"))  # before: last-v1.ckpt beside a stale last.ckpt
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6


def test_a_full_disk_is_named_as_such(tmp_path, monkeypatch):
    # before: "[enforce fail at inline_container.cc:672] unexpected pos" as the last line
    from collections import namedtuple

    from clipo.run.crash import what_to_do

    def torch_on_a_full_disk(obj, file, *args, **kwargs):
        file.write(b"\0" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1408 vs 1300")

    monkeypatch.setattr("clipo.run.checkpointing.torch.save", torch_on_a_full_disk)
    monkeypatch.setattr("clipo.run.checkpointing.shutil.disk_usage", lambda path: namedtuple("u", "total used free")(1, 1, 0))
    with pytest.raises(OSError, match=r"No space left on device: writing checkpoint .*last.ckpt failed \(0 MiB free "
                                      r"there\); the previous checkpoint stays") as error:
        AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "last.ckpt")
    assert list(tmp_path.iterdir()) == []  # no partial file
    assert what_to_do(error.value, str(tmp_path)).startswith(f"the disk is full: free space on the disk of {tmp_path}")


def test_an_unwritable_run_folder_stops_before_hydra_opens_its_log(tmp_path, capsys):
    # before: Hydra's "Unable to configure handler 'file'" (as root, a folder under a file stands in for read-only)
    from omegaconf import OmegaConf

    from clipo.run.console import RunFolderCheck

    (tmp_path / "a_file").write_text("")
    config = OmegaConf.create({"hydra": {"run": {"dir": str(tmp_path / "a_file" / "run")}}})
    with pytest.raises(SystemExit) as stop:
        RunFolderCheck().on_run_start(config)
    assert stop.value.code == 2
    assert f"cannot write the run folder {tmp_path / 'a_file' / 'run'}" in capsys.readouterr().err
    RunFolderCheck().on_run_start(OmegaConf.create({"hydra": {"run": {"dir": str(tmp_path / "fine")}}}))


def test_a_crash_saves_nothing_once_weights_moved_or_before_training_started(tmp_path):
    """A step that had already stepped an optimizer is part way: the previous checkpoint stays. A failure
    during set-up (e.g. while restoring a checkpoint) must not overwrite last.ckpt with fresh weights."""
    from types import SimpleNamespace

    from lightning.pytorch.trainer.states import TrainerFn

    from clipo.run.crash import CrashCheckpoint

    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    no_saving = SimpleNamespace(last_model_path="", save_last=True)  # save_last would fail on this stand-in
    trainer = SimpleNamespace(optimizers=[optimizer], datamodule=None, checkpoint_callback=no_saving, world_size=1,
                              state=SimpleNamespace(fn=TrainerFn.FITTING), default_root_dir=tmp_path, global_step=3)
    crash = CrashCheckpoint()
    crash.on_exception(trainer, None, RuntimeError("while restoring"))
    assert crash.outcome is None  # not started: nothing saved, nothing claimed
    crash.on_train_start(trainer, SimpleNamespace())
    crash.on_train_batch_start(trainer, None)
    assert not crash.changed
    weight.sum().backward()
    optimizer.step()
    assert crash.changed
    crash.on_exception(trainer, None, RuntimeError("in the update"))
    assert crash.outcome.startswith("not saved: the step had already updated weights")
