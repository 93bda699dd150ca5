"""What a crash says fits what exists: "continue with ckpt_path=last" only where a checkpoint is there, a
restore that cannot fit the model said as such, and with several processes the rank that failed first."""

from __future__ import annotations

import json
import types

import pytest

from clipo.run import ranks
from clipo.run.crash_report import crash_report, error_text, what_to_do
from clipo.train import train
from tests.conftest import tiny_parity_config as _config
from tests.run.test_checkpointing import _CrashingParity


@pytest.fixture
def failing(monkeypatch):
    """`ParityVerifier` raising in the call its `fail_at` names, registered as "parity"."""
    from clipo.registry import VERIFIERS

    failing = type("FailingParity", (_CrashingParity,), {})
    monkeypatch.setitem(VERIFIERS._entries, "parity", failing)
    return failing


@pytest.mark.parametrize("fail_at, outcome", [
    # before: "the state after step 1 is saved in None. To do: ... continue with ... ckpt_path=last"
    (2, "; nothing saved (callbacks.model_checkpoint.save_last is off). To do: "),
    # before: the untrained weights saved, and the advice to continue from them
    (1, "; no step was completed, so there is nothing to keep. To do: "),
])
def test_advice_never_offers_a_checkpoint_that_does_not_exist(failing, tmp_path, fail_at, outcome):
    failing.fail_at = fail_at
    overrides = ["trainer.max_steps=3", "data.val=null"] + (["callbacks.model_checkpoint.save_last=false"]
                                                           if fail_at == 2 else [])
    with pytest.raises(RuntimeError, match="verifier exploded") as error:
        train(_config(tmp_path, *overrides))
    line = error.value.__notes__[-1]
    assert line.startswith(f"training failed in RL step {fail_at}: RewardFunctionError: ") and outcome in line, line
    assert line.endswith("then run the same command again") and "ckpt_path" not in line
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["checkpoint"] is None and summary["what_to_do"].endswith("then run the same command again")


def test_a_checkpoint_whose_weights_do_not_fit_the_changed_model_says_so(parity_verifier, tmp_path):
    # before: a bare "Error(s) in loading state_dict for ClipoModule:" and advice to continue with ckpt_path=last
    train(_config(tmp_path, "trainer.max_steps=1", "data.val=null"))
    with pytest.raises(RuntimeError) as error:
        train(_config(tmp_path, "trainer.max_steps=2", "data.val=null", "ckpt_path=last",
                      "model.tiny.hidden_size=128", "resume.allow_changes=[model]"))
    line = error.value.__notes__[-1]
    assert line.startswith("training failed while setting up or restoring the checkpoint: RuntimeError: Error(s) in "
                           "loading state_dict for ClipoModule: size mismatch for policy.")
    assert line.endswith("To do: the checkpoint's weights do not fit this run's model (a change accepted with "
                         "resume.allow_changes changes their shapes): resume with the checkpoint's model settings, "
                         "or start fresh (ckpt_path=null)")


def test_error_text_keeps_the_line_a_message_announces():
    error = RuntimeError("Error(s) in loading state_dict for M:\n\tsize mismatch for w: [2] vs [3].\n\tmore")
    assert error_text(error) == "RuntimeError: Error(s) in loading state_dict for M: size mismatch for w: [2] vs [3]."
    assert what_to_do(ValueError("x"), "/run", resumable=False) == ("fix the cause (full traceback in /run/train.log), "
                                                                    "then run the same command again")


def test_a_broken_collective_reports_the_rank_that_failed_first(tmp_path, monkeypatch):
    """Rank 0's collective broke; rank 1 recorded its own failure before exiting (its record in the run folder,
    the store being unreachable here): rank 0's report is rank 1's error."""
    monkeypatch.setattr(ranks, "world", lambda: (1, 2))
    monkeypatch.setattr(ranks, "BOARD", ranks._Board())
    ranks.set_phase("RL step 4: reward faulty", 3)
    ranks.record_failure(ValueError("bad reward"), tmp_path, "ValueError: bad reward")
    monkeypatch.setattr(ranks, "world", lambda: (0, 2))
    ranks.set_phase("RL step 4: contrastive", 3)
    crash = types.SimpleNamespace(in_step=True, started=True, outcome="not saved (several processes)")
    broken = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:19124")
    report = crash_report(broken, 3, crash, str(tmp_path), rank=0, world=2)
    assert report.failed_rank == 1 and report.error == "rank 1 (RL step 4: reward faulty): ValueError: bad reward"
    assert report.line.startswith("training failed on rank 1 (RL step 4: reward faulty): ValueError: bad reward; "
                                  "rank 0 stopped with it (its collective in RL step 4: contrastive broke); not saved")
    own = crash_report(ValueError("bad reward"), 3, crash, str(tmp_path), rank=1, world=2)
    assert own.line.startswith("training failed on rank 1 (RL step 4: contrastive): ValueError: bad reward")
