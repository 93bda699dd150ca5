"""Rollout logs: rows, the JSONL file, its reader and summaries, the W&B / TensorBoard hand-off."""

from __future__ import annotations

import json
import math

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from clipo.multirun.rollouts import extremes, load_rollouts, step_summary
from clipo.report import main
from clipo.rl.rewards import RewardScores
from clipo.rl.rollout_log import RolloutLog, markdown_rows, publish, rollout_rows
from clipo.rollout import RolloutBatch


def batch(responses: list[str], lengths: list[int]) -> RolloutBatch:
    n, t = len(responses), max(lengths)
    mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    return RolloutBatch(
        sequences=torch.zeros(n, 2 + t, dtype=torch.long), attention_mask=torch.ones(n, 2 + t, dtype=torch.long),
        response_mask=mask, prompt_len=2, groups=torch.arange(n) // 2, prompts=[f"prompt {i // 2}" for i in range(n)],
        responses=responses,
        ground_truths=["4"] * n, truncated=torch.tensor(lengths) == t,
    )


def scores(verifier: list[float], brevity: list[float | None]) -> RewardScores:
    table = torch.tensor([[v, math.nan if b is None else b] for v, b in zip(verifier, brevity)])
    return RewardScores(["verifier", "brevity"], torch.tensor([1.0, 0.5]), table, table[:, 0] > 0.5,
                        [f"prompt {i // 2}" for i in range(len(verifier))], extra={"note": list("abcd")})


def four_rows(step: int, max_rows: int | None = None) -> list[dict]:
    rollouts = batch(["4", "five", "4 | ok\nyes", "x"], [1, 4, 3, 4])
    s = scores([1.0, 0.0, 1.0, 0.0], [-0.1, None, -0.3, -0.1])
    shaped = s.total + torch.tensor([-0.2, 0.0, -0.1, 0.0])  # bonus on correct rollouts only
    return rollout_rows(step, rollouts, s, shaped, torch.tensor([1.0, -1.0, 1.0, -1.0]),
                        torch.tensor([1.0, 0.0, 0.5, 0.0]), torch.tensor([-0.2, 0.0, -0.1, 0.0]), max_rows)


def test_rows_hold_every_field():
    rows = four_rows(step=3)
    assert len(rows) == 4
    first = rows[0]
    assert first["step"] == 3 and first["index"] == 0 and rows[3]["index"] == 3 and first["group"] == 0 and first["prompt"] == "prompt 0" and first["response"] == "4"
    assert first["ground_truth"] == "4" and first["correct"] is True and first["length"] == 1
    assert first["truncated"] is False and rows[1]["truncated"] is True
    assert first["rewards"] == {"verifier": 1.0, "brevity": pytest.approx(-0.1)}
    assert rows[1]["rewards"]["brevity"] is None  # None: did not apply
    # shaped = 1*verifier + 0.5*brevity + bonus = 1 - 0.05 - 0.2 = 0.75
    assert first["shaped_reward"] == pytest.approx(0.75) and first["advantage"] == 1.0
    assert first["contrastive_loss"] == 1.0 and first["bonus"] == pytest.approx(-0.2)
    assert first["extra/note"] == "a"
    json.dumps(rows)  # JSON-ready
    assert len(four_rows(step=3, max_rows=2)) == 2


def test_jsonl_round_trip_summary_and_extremes(tmp_path):
    log = RolloutLog(tmp_path / "rollouts.jsonl", every_n_steps=2, max_rows_per_step=3)
    assert [log.due(s) for s in (1, 2, 3, 4)] == [False, True, False, True]
    assert not RolloutLog(None, every_n_steps=0).due(0)
    log.write(four_rows(2, log.max_rows_per_step))
    log.write(four_rows(4))
    log.write(four_rows(4)[:1])  # step 4 again (a resumed run): the latest block wins
    df = load_rollouts(tmp_path)
    assert df["step"].tolist() == [2, 2, 2, 4]
    summary = step_summary(df).set_index("step")
    assert summary.loc[2, "rollouts"] == 3
    assert summary.loc[2, "reward/verifier"] == pytest.approx(2 / 3)  # 1, 0, 1
    assert summary.loc[2, "reward/brevity"] == pytest.approx(-0.2)  # -0.1 and -0.3 (None skipped)
    assert summary.loc[2, "correct"] == pytest.approx(2 / 3) and summary.loc[2, "length"] == pytest.approx(8 / 3)
    top, bottom = extremes(df, k=1)
    assert top["response"].tolist() == ["4"] and bottom["response"].tolist() == ["five"]  # shaped 0.75 and 0


def test_half_written_last_line_is_skipped(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in four_rows(1)) + '\n{"step": 2, "resp')
    assert load_rollouts(path)["step"].tolist() == [1] * 4


def test_report_writes_the_rollout_page_of_a_run(tmp_path, capsys):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("[]\n")
    RolloutLog(run / "rollouts.jsonl").write(four_rows(1))
    assert main([str(run)]) == 0
    page = (run / "rollouts.md").read_text()
    assert "## Per step (means)" in page and "## Highest shaped reward" in page
    assert "4 \\| ok ⏎ yes" in page  # table cells keep their row


class FakeWandb(WandbLogger):
    def __init__(self) -> None:  # no wandb needed: only the table call is recorded
        self.tables = []

    def log_table(self, key, columns=None, data=None, dataframe=None, step=None):
        self.tables.append((key, columns, data, step))


class FakeWriter:
    def __init__(self) -> None:
        self.texts = []

    def add_text(self, tag, text, global_step=None):
        self.texts.append((tag, text, global_step))


class FakeTensorBoard(TensorBoardLogger):
    def __init__(self) -> None:
        self.writer = FakeWriter()

    @property
    def experiment(self):
        return self.writer


def test_publish_gives_wandb_a_table_and_tensorboard_text(tmp_path):
    wandb, tensorboard = FakeWandb(), FakeTensorBoard()
    rows = four_rows(5)
    publish([CSVLogger(tmp_path), wandb, tensorboard], rows, step=5)
    ((key, columns, data, step),) = wandb.tables
    assert key == "rollouts" and step == 5 and len(data) == 4
    assert columns.index("reward/brevity") and data[0][columns.index("response")] == "4"
    ((tag, text, global_step),) = tensorboard.writer.texts
    assert tag == "rollouts" and global_step == 5 and text == markdown_rows(rows)
    assert text.count("\n") == 5 and "4 \\| ok⏎yes" in text  # header, rule, 4 rows
