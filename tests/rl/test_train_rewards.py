"""Researchers' reward functions and rollout logs through `train` (the tiny model, a user module on PYTHONPATH)."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from clipo.rl.rewards import RewardFunctionError
from clipo.train import train
from tests.conftest import tiny_parity_config as _config
from tests.test_cli import TINY, _run

USER_MODULE = """
    def brevity(prompts, completions, completion_ids=None, ground_truth=None, **kwargs):
        assert len(completion_ids) == len(completions) and len(ground_truth) == len(completions)
        return [-len(ids) / 10 for ids in completion_ids]

    def even_only(prompts, completions, **kwargs):  # None: "does not apply" on odd rollouts
        return [1.0 if i % 2 == 0 else None for i in range(len(completions))]

    def broken(prompts, completions, **kwargs):
        raise ZeroDivisionError("division by zero in my reward")
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "my_rewards.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)  # another test's module of that name
    return folder


def test_weighted_rewards_and_rollout_rows_agree_with_the_logged_step(parity_verifier, user_module, tmp_path):
    cfg = _config(tmp_path / "run", "reward_funcs=[verifier,my_rewards:brevity,my_rewards:even_only]",
                  "reward_weights=[1.0,0.5,2.0]", "data.val=null", "trainer.max_steps=2")
    _, objects = train(cfg)
    history = objects["summary"].history
    assert [row["step"] for row in history] == [1.0, 2.0]
    rows = [json.loads(line) for line in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    for logged in history:
        # weighted sum by hand: the verifier's mean + 0.5 x brevity's mean + 2 x (1.0 on half the rollouts)
        expected = logged["reward/verifier/mean"] + 0.5 * logged["reward/brevity/mean"] + 2.0 * 0.5
        assert logged["train/reward"] == pytest.approx(expected, abs=1e-6)
        assert logged["reward/even_only/mean"] == 1.0 and logged["reward/even_only/std"] == 0.0
        assert logged["train/acc"] == pytest.approx(logged["reward/verifier/mean"])  # the verifier's correctness
        assert logged["time/reward/brevity"] >= 0 and logged["time/verify"] >= 0
        step = [r for r in rows if r["step"] == logged["step"]]
        assert len(step) == 8  # 2 prompts x 4 rollouts, all of them (cap 64)
        mean = lambda values: sum(values) / len(values)  # noqa: E731
        assert mean([r["rewards"]["verifier"] for r in step]) == pytest.approx(logged["reward/verifier/mean"])
        assert mean([r["rewards"]["brevity"] for r in step]) == pytest.approx(logged["reward/brevity/mean"])
        assert [r["rewards"]["even_only"] for r in step] == [1.0, None] * 4
        assert mean([r["correct"] for r in step]) == pytest.approx(logged["train/acc"])
        assert mean([r["shaped_reward"] for r in step]) == pytest.approx(logged["train/shaped_reward"], abs=1e-6)
        assert mean([r["length"] for r in step]) == pytest.approx(logged["train/response_len"])
        assert mean([r["bonus"] for r in step if r["correct"]]) == pytest.approx(logged["contrastive/reward_bonus"])
        # shaped = the weighted sum + CLIPO's bonus (no overlong shaping in grpo)
        for r in step:
            total = r["rewards"]["verifier"] + 0.5 * r["rewards"]["brevity"] + 2.0 * (r["rewards"]["even_only"] or 0.0)
            assert r["shaped_reward"] == pytest.approx(total + r["bonus"], abs=1e-6)
            assert r["rewards"]["brevity"] == pytest.approx(-r["length"] / 10)  # completion_ids: the response, no padding
            assert r["prompt"].endswith("assistant\n") and r["ground_truth"] and isinstance(r["advantage"], float)


def test_a_reward_function_that_raises_fails_the_step_naming_it(parity_verifier, user_module, tmp_path):
    cfg = _config(tmp_path / "run", "reward_funcs=[verifier,my_rewards:broken]", "data.val=null")
    with pytest.raises(RewardFunctionError, match="'broken' raised ZeroDivisionError: division by zero in my reward"):
        train(cfg)


def test_rollout_log_every_n_steps_and_cap(parity_verifier, tmp_path):
    cfg = _config(tmp_path / "run", "data.val=null", "trainer.max_steps=2", "logging.rollouts_every_n_steps=2",
                  "logging.rollouts_max_rows_per_step=3")
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 2, 2] and [r["index"] for r in rows] == [0, 1, 2]
    off = _config(tmp_path / "off", "data.val=null", "trainer.max_steps=1", "logging.rollouts_every_n_steps=0")
    train(off)
    assert not (tmp_path / "off" / "rollouts.jsonl").exists()


def test_command_line_imports_reward_functions_from_the_working_directory(tmp_path):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent(USER_MODULE))
    result = _run(*TINY, "reward_funcs=[verifier,my_rewards:brevity]", "reward_weights=[1.0,0.5]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (log,) = (tmp_path / "logs" / "train" / "runs").glob("*/rollouts.jsonl")
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 4 and all(r["rewards"]["brevity"] <= 0 for r in rows)

    result = _run(*TINY, "reward_funcs=[verifier,my_rewardz:brevity]", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "module 'my_rewardz' does not import" in output
    assert "Traceback" not in output and "Seed set" not in output  # failed before anything was built


TRL_SHAPES = """
    def trl_shapes(prompts, completions, solution, difficulty, **kwargs):
        # 1.0 when the keywords are as TRL's GRPOTrainer gives them for a conversational data set
        ok = all(isinstance(p, list) and p[-1]["role"] == "user" for p in prompts)
        ok &= all(c == [{"role": "assistant", "content": c[0]["content"]}] for c in completions)
        ok &= "prompt" not in kwargs and len(solution) == len(difficulty) == len(completions)
        return [float(ok)] * len(completions)
"""


def test_trl_reward_functions_and_a_reward_model_on_a_trl_dataset(parity_verifier, tmp_path, monkeypatch):
    from omegaconf import open_dict
    from trl.rewards import accuracy_reward, think_format_reward

    from tests.rl.test_reward_model import by_hand, save_tiny_classifier

    rows = [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "solution": f"${2 * i}$", "difficulty": i}
            for i in range(8)]
    (tmp_path / "trl.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "my_trl.py").write_text(textwrap.dedent(TRL_SHAPES))
    monkeypatch.syspath_prepend(str(tmp_path))
    classifier = save_tiny_classifier(tmp_path / "tiny-rm")
    cfg = _config(tmp_path / "run", "reward_funcs=[verifier,trl.rewards:accuracy_reward,"
                  f"trl.rewards:think_format_reward,my_trl:trl_shapes,{classifier}]", "reward_weights=[1.0,1.0,1.0,0.0,0.5]", "data.val=null",
                  "trainer.max_steps=1")
    with open_dict(cfg):
        cfg.data.train = {"source": "hub", "name": str(tmp_path / "trl.jsonl")}  # TRL's columns, found by name
    _, objects = train(cfg)
    (logged,) = objects["summary"].history
    for name in ("accuracy_reward", "think_format_reward", "trl_shapes", "tiny-rm"):
        assert f"reward/{name}/mean" in logged and f"time/reward/{name}" in logged
    assert logged["reward/trl_shapes/mean"] == 1.0
    rollouts = [json.loads(line) for line in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    by_prompt = {r["prompt"][0]["content"]: r for r in rows}
    completions = [[{"role": "assistant", "content": r["response"]}] for r in rollouts]
    records = [next(v for k, v in by_prompt.items() if k in r["prompt"]) for r in rollouts]
    solutions = [r["solution"] for r in records]
    assert [r["rewards"]["accuracy_reward"] for r in rollouts] == accuracy_reward(completions, solutions)
    assert [r["rewards"]["think_format_reward"] for r in rollouts] == think_format_reward(completions)
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(classifier)
    texts = [tokenizer.apply_chat_template(rec["prompt"] + c, tokenize=False) for rec, c in zip(records, completions)]
    assert [r["rewards"]["tiny-rm"] for r in rollouts] == pytest.approx(by_hand(classifier, texts), abs=1e-4)
    assert logged["train/reward"] == pytest.approx(sum(
        r["rewards"]["verifier"] + r["rewards"]["accuracy_reward"] + r["rewards"]["think_format_reward"]
        + 0.5 * r["rewards"]["tiny-rm"] for r in rollouts) / len(rollouts), abs=1e-5)
