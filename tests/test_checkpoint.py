"""Checkpoint and resume: the head, its optimizer, the warm-up counter and the RNG come back;
checkpoints are written atomically and the final step is always kept."""

import pytest
import torch

from clipo.checkpointing import AtomicCheckpointIO
from clipo.train import train
from tests.conftest import tiny_parity_config as _config


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_resumed_run_matches_an_uninterrupted_one(parity_verifier, tmp_path):
    overrides = ["trainer.max_steps=3", "data.val=null", "contrastive.head_warmup_steps=1"]
    _, full = train(_config(tmp_path / "full", *overrides))

    _config_first = _config(tmp_path / "first", *overrides)
    _config_first.trainer.max_steps = 2  # the first run stops after step 2 (1 head-only + 1 policy update)
    _, first = train(_config_first)
    checkpoint = tmp_path / "first" / "checkpoints" / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["clipo"]["rl_step"] == 3 and saved["clipo"]["head_pooler_optimizer"] is not None

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


KILLED_RUN = """
import sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from tests.conftest import ParityVerifier, tiny_parity_config
from clipo.registry import VERIFIERS

class SlowParity(ParityVerifier):  # slow enough to be killed mid-run
    def __call__(self, responses, ground_truths):
        time.sleep(0.4)
        return super().__call__(responses, ground_truths)

VERIFIERS.register("parity")(SlowParity)
from clipo.train import train
train(tiny_parity_config(Path({out!r}), *{overrides!r}))
"""


def test_run_killed_mid_training_resumes_exactly(parity_verifier, tmp_path):
    """SIGKILL after a few steps, resume from last.ckpt: the same weights as a run never stopped."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    overrides = ["trainer.max_steps=6", "data.val=null", "callbacks.model_checkpoint.every_n_train_steps=1",
                 "callbacks.model_checkpoint.save_top_k=-1"]
    _, full = train(_config(tmp_path / "full", *overrides))

    killed_dir = tmp_path / "killed"
    script = KILLED_RUN.format(repo=str(Path(__file__).resolve().parents[1]), out=str(killed_dir), overrides=overrides)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed_dir / "checkpoints" / "step_000003.ckpt").exists() and time.time() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = torch.load(killed_dir / "checkpoints" / "last.ckpt", weights_only=True)  # never a half-written file
    assert 2 <= saved["global_step"] < 6  # last.ckpt follows step_000003.ckpt: the kill may come between them

    _, resumed = train(_config(tmp_path / "resumed", *overrides, f"ckpt_path={killed_dir / 'checkpoints' / 'last.ckpt'}"))
    for name, value in _params(full["module"]).items():
        torch.testing.assert_close(_params(resumed["module"])[name], value, rtol=0, atol=0, msg=name)


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

    monkeypatch.setattr("clipo.checkpointing.torch.save", crash_mid_write)
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
