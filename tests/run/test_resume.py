"""Resume continues the same run: the checkpoint is found, read and compared before any weight loads,
and every log continues from the checkpoint's step (nothing lost, nothing twice)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from clipo.builders import run_config
from clipo.config import ConfigError
from clipo.run.resume import prepare_resume
from clipo.run.run_logs import kept_csv_rows
from clipo.train import train
from tests.conftest import TINY_OVERRIDES, compose_config
from tests.conftest import tiny_parity_config as _config


def _fake_checkpoint(path, cfg, step=3) -> str:
    """What the resume check reads of a clipo checkpoint: its step and saved config (no weights needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {}, "clipo": {"config": run_config(cfg)}}, path)
    return str(path)


def _resume(tmp_path, *overrides):
    cfg = compose_config([*TINY_OVERRIDES, *overrides], output_dir=tmp_path)
    return prepare_resume(cfg, run_config(cfg))


def test_ckpt_path_last_without_a_checkpoint_is_an_error_unless_fresh_is_asked(tmp_path):
    # before: started from scratch with exit 0
    with pytest.raises(ConfigError, match=r"ckpt_path=last: no last.ckpt in .*resume.missing=fresh"):
        _resume(tmp_path, "ckpt_path=last")
    assert _resume(tmp_path, "ckpt_path=last", "resume.missing=fresh") is None
    _fake_checkpoint(tmp_path / "checkpoints" / "last.ckpt", compose_config(TINY_OVERRIDES, tmp_path), step=3)
    resume = _resume(tmp_path, "ckpt_path=last")
    assert resume.path.endswith("checkpoints/last.ckpt") and resume.step == 3


def test_a_damaged_or_foreign_checkpoint_says_so(tmp_path):
    # before: torch's "Weights only load failed ... Re-running torch.load with weights_only=False" as the last line
    (tmp_path / "damaged.ckpt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ConfigError, match=r"damaged.ckpt is damaged: not a whole zip archive as torch.save writes: "
                                          r"cut short by a copy"):
        _resume(tmp_path, f"ckpt_path={tmp_path / 'damaged.ckpt'}")
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "foreign.ckpt")
    with pytest.raises(ConfigError, match=r"foreign.ckpt is not a clipo training checkpoint \(it holds \['model'\]"):
        _resume(tmp_path, f"ckpt_path={tmp_path / 'foreign.ckpt'}")


@pytest.mark.parametrize("changes, listed", [
    (["loss=none"], ["contrastive.mode: 'reward' (checkpoint) -> 'off'", "loss.name: 'infonce' (checkpoint) -> 'none'"]),
    (["model.tiny.hidden_size=128"], ["model.tiny.hidden_size: 64 (checkpoint) -> 128"]),
    (["head=mlp", "pooler=last"], ["head.name: 'linear' (checkpoint) -> 'mlp'", "pooler.name: 'mean' (checkpoint) -> 'last'"]),
    (["contrastive.mode=loss"], ["contrastive.mode: 'reward' (checkpoint) -> 'loss'"]),
])
def test_a_different_setup_is_refused_with_each_difference(tmp_path, changes, listed):
    # before: loss=none silently dropped the head; a bigger model ended in a 66-line size-mismatch traceback
    saved = _fake_checkpoint(tmp_path / "run.ckpt", compose_config(TINY_OVERRIDES, tmp_path))
    with pytest.raises(ConfigError, match="trained with a different setup") as error:
        _resume(tmp_path, f"ckpt_path={saved}", *changes)
    for line in listed:
        assert line in str(error.value)
    allowed = sorted({line.split(":")[0].split(".")[0] for line in listed})
    assert "resume.allow_changes=[" in str(error.value)
    assert _resume(tmp_path, f"ckpt_path={saved}", *changes, f"resume.allow_changes=[{','.join(allowed)}]").step == 3


def test_runtime_settings_may_change_on_resume(tmp_path):
    saved = _fake_checkpoint(tmp_path / "run.ckpt", compose_config(TINY_OVERRIDES, tmp_path))
    assert _resume(tmp_path, f"ckpt_path={saved}", "model.gradient_checkpointing=true", "loss.temperature=0.2",
                   "rollout.group_size=8", "optimizer.lr=1e-6").step == 3


def test_kept_csv_rows_follow_lightnings_step_numbering():
    # a train row of RL step s logs step s-1; a validation row after RL step s logs step s
    rows = [{"step": "0", "train/reward": "1", "val/acc": ""}, {"step": "1", "train/reward": "2", "val/acc": ""},
            {"step": "2", "train/reward": "", "val/acc": "0.5"}, {"step": "2", "train/reward": "3", "val/acc": ""},
            {"step": "3", "train/reward": "4", "val/acc": ""}]
    assert kept_csv_rows(rows, 2) == rows[:3]


def _train_rows(run) -> list[dict]:
    with open(run / "csv" / "metrics.csv") as file:
        return [row for row in csv.DictReader(file) if row.get("train/reward")]


def test_resume_in_the_same_folder_keeps_every_log_and_repeats_no_step(parity_verifier, tmp_path):
    """A run of 4 steps checkpointed at step 2 (as a run killed at step 4 would be), resumed from step 2 in
    its own folder: each log holds steps 1-4 once, the first two from the first run, and the resumed
    steps equal the first run's (the resume is exact). Before: metrics.csv held only steps 3-4 and
    rollouts.jsonl held steps 3-4 twice."""
    run = tmp_path / "run"
    overrides = ["trainer.max_steps=4", "data.val=null", "callbacks.model_checkpoint.every_n_train_steps=2",
                 "callbacks.model_checkpoint.save_top_k=-1", "logging.rollouts_max_rows_per_step=4"]
    train(_config(run, *overrides))
    first_rows = _train_rows(run)
    first_rollouts = (run / "rollouts.jsonl").read_text().splitlines()
    train(_config(run, *overrides, f"ckpt_path={run / 'checkpoints' / 'step_000002.ckpt'}"))

    rows = _train_rows(run)
    assert [row["step"] for row in rows] == ["0", "1", "2", "3"]
    for before, after in zip(first_rows, rows):
        assert float(after["train/reward"]) == pytest.approx(float(before["train/reward"]), abs=1e-6)
    rollouts = (run / "rollouts.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in rollouts] == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    assert [json.loads(line)["response"] for line in rollouts] == [json.loads(line)["response"] for line in first_rollouts]
    history = json.loads((run / "summary.json").read_text())["history"]
    assert [row["step"] for row in history] == [1, 2, 3, 4]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step_000002.ckpt", "step_000004.ckpt"]


def flip_bytes(path, count=64) -> None:
    """Flip `count` bytes in the middle of the largest tensor of a torch checkpoint (a zip archive), leaving a
    valid archive that torch loads without a word."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        entry = max((info for info in archive.infolist() if "/data/" in info.filename), key=lambda info: info.file_size)
    with open(path, "r+b") as file:
        file.seek(entry.header_offset + 26)
        name_length, extra_length = int.from_bytes(file.read(2), "little"), int.from_bytes(file.read(2), "little")
        start = entry.header_offset + 30 + name_length + extra_length + entry.file_size // 2
        file.seek(start)
        data = bytes(b ^ 0xFF for b in file.read(count))
        file.seek(start)
        file.write(data)


def test_a_bit_flipped_checkpoint_is_refused_unless_verification_is_off(tmp_path):
    # before: a valid zip with 64 flipped bytes in a weight trained to exit 0 with weights of 2e37
    saved = _fake_checkpoint(tmp_path / "run.ckpt", compose_config(TINY_OVERRIDES, tmp_path))
    checkpoint = torch.load(saved, weights_only=True)
    checkpoint["state_dict"] = {"policy.w": torch.ones(1000)}
    torch.save(checkpoint, saved)
    flip_bytes(saved)
    assert torch.load(saved, weights_only=True)["state_dict"]["policy.w"].abs().max() > 1  # torch does not notice
    with pytest.raises(ConfigError, match=r"run.ckpt is damaged: its entry .*data/0 does not match its CRC-32: its "
                                          r"bytes changed after they were written; resume from another one"):
        _resume(tmp_path, f"ckpt_path={saved}")
    assert _resume(tmp_path, f"ckpt_path={saved}", "resume.verify=false").step == 3


def test_a_broken_last_link_or_a_folder_that_is_no_checkpoint_is_named(tmp_path):
    # before: FileNotFoundError from deep in the glob; a plain folder reached Lightning and failed with advice
    # to continue from a checkpoint that did not exist
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").symlink_to(tmp_path / "gone.ckpt")
    with pytest.raises(ConfigError, match=r"last.ckpt is a link to .*gone.ckpt, which does not exist; point it"):
        _resume(tmp_path, "ckpt_path=last")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ConfigError, match=r"folder is a folder but not a checkpoint: neither DeepSpeed's"):
        _resume(tmp_path, f"ckpt_path={tmp_path / 'folder'}")


def _deepspeed_folder(path, cfg, step=3, stage=2, ranks=2):
    """What a DeepSpeed checkpoint folder holds for the resume check: `latest`, and Lightning's state beside the
    module in the tag folder's model states."""
    (path / "checkpoint").mkdir(parents=True)
    (path / "latest").write_text("checkpoint")
    torch.save({"global_step": step, "module": {"w": torch.zeros(2)}, "clipo": {"config": run_config(cfg)},
                "ds_config": {"zero_optimization": {"stage": stage}}, "dp_world_size": ranks,
                "callbacks": {"RunSummary": {"wandb_id": "abc"}}},
               path / "checkpoint" / "mp_rank_00_model_states.pt")
    return path


ZERO2 = ["strategy=deepspeed_zero2", "trainer.devices=2", "trainer.accelerator=cpu"]


def test_a_deepspeed_folder_resumes_with_its_steps_so_the_logs_continue(tmp_path):
    # before: a folder got step -1, so metrics.csv was rewritten from the resumed step and rollouts repeated
    folder = _deepspeed_folder(tmp_path / "checkpoints" / "last.ckpt", compose_config([*TINY_OVERRIDES, *ZERO2]))
    resume = _resume(tmp_path, "ckpt_path=last", *ZERO2)
    assert resume.path == str(folder) and resume.step == 3 and resume.wandb_id == "abc"
    with pytest.raises(ConfigError, match=r"DeepSpeed checkpoint folder \(ZeRO stage 2\), which strategy=ddp cannot "
                                          r"read: resume with strategy=deepspeed_zero2"):
        _resume(tmp_path, "ckpt_path=last", "strategy=ddp", "trainer.devices=2")
    with pytest.raises(ConfigError, match="holds ZeRO stage 2 state, this run uses stage 3"):
        _resume(tmp_path, "ckpt_path=last", *ZERO2, "strategy=deepspeed_zero3")
    with pytest.raises(ConfigError, match="partitioned over 2 processes, this run starts 1"):
        _resume(tmp_path, "ckpt_path=last", *ZERO2, "trainer.devices=1")
    with pytest.raises(ConfigError, match="model.tiny.hidden_size: 64 \\(checkpoint\\) -> 128"):  # compared as a file
        _resume(tmp_path, "ckpt_path=last", *ZERO2, "model.tiny.hidden_size=128")
    (folder / "checkpoint" / "mp_rank_00_model_states.pt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ConfigError, match=r"is damaged: checkpoint/mp_rank_00_model_states.pt: not a whole zip"):
        _resume(tmp_path, "ckpt_path=last", *ZERO2)


def test_an_fsdp_folder_resumes_with_its_steps_and_its_shards_are_verified(tmp_path):
    from clipo.run.integrity import write_checksums

    fsdp = ["strategy=fsdp", "trainer.devices=2", "trainer.accelerator=cpu"]
    folder = tmp_path / "step_000004.ckpt"
    folder.mkdir()
    torch.save({"global_step": 4, "clipo": {"config": run_config(compose_config([*TINY_OVERRIDES, *fsdp]))}},
               folder / "meta.pt")
    (folder / "__0_0.distcp").write_bytes(bytes(range(256)) * 64)
    write_checksums(folder)
    assert _resume(tmp_path, f"ckpt_path={folder}", *fsdp).step == 4
    with pytest.raises(ConfigError, match="FSDP checkpoint folder, which strategy=deepspeed_zero2 cannot read"):
        _resume(tmp_path, f"ckpt_path={folder}", *ZERO2)
    with open(folder / "__0_0.distcp", "r+b") as file:  # the shards have no checksum of their own
        file.seek(1000)
        file.write(b"\x00\x01")
    with pytest.raises(ConfigError, match=r"__0_0.distcp: its size or CRC-32 differs from the one checksums.json"):
        _resume(tmp_path, f"ckpt_path={folder}", *fsdp)


def test_a_file_checkpoint_under_deepspeed_is_named(tmp_path):
    saved = _fake_checkpoint(tmp_path / "run.ckpt", compose_config([*TINY_OVERRIDES, *ZERO2], tmp_path))
    with pytest.raises(ConfigError, match="resumes only from the checkpoint folders DeepSpeed writes"):
        _resume(tmp_path, f"ckpt_path={saved}", *ZERO2)
