"""Training with `rollout.engine=vllm` on the tiny model: CLIPO's hidden states and the old log-probs
come from the training forward, the importance weights and mismatch are logged, and a resumed run
equals an uninterrupted one. Skipped without vLLM (`./scripts/setup.sh --vllm`)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from clipo.train import train
from tests.conftest import tiny_parity_config as _config

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (./scripts/setup.sh --vllm installs it)"
)
VLLM = ["rollout.engine=vllm", "model.tiny.num_attention_heads=2", "model.tiny.num_key_value_heads=1", "data.val=null"]


def test_two_steps_checkpoint_and_resume_like_an_uninterrupted_run(parity_verifier, tmp_path):
    _, full = train(_config(tmp_path / "full", *VLLM, "trainer.max_steps=2"))
    module = full["module"]
    assert module.collector.engine.pushes == 2  # the start weights, then the first update's (the last one is never sampled)
    history = full["summary"].history
    assert len(history) == 2
    for row in history:  # mismatch logged, weights ~1: the same fp32 weights in both
        assert row["rollout_corr/logprob_diff_max"] < 1e-4
        assert abs(row["rollout_corr/weight_mean"] - 1) < 1e-4
        assert "contrastive/anchor_frac" in row or any(k.startswith("contrastive/") for k in row)

    _, first = train(_config(tmp_path / "first", *VLLM, "trainer.max_steps=1"))
    checkpoint = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    _, resumed = train(_config(tmp_path / "resumed", *VLLM, "trainer.max_steps=2", f"ckpt_path={checkpoint}"))
    for name, value in module.policy.named_parameters():
        torch.testing.assert_close(dict(resumed["module"].policy.named_parameters())[name], value, rtol=0, atol=0, msg=name)
    rewards = lambda run: [row["train/reward"] for row in run["summary"].history]  # noqa: E731
    assert rewards(resumed) == rewards(full)


def test_auto_picks_vllm_and_samples_in_bf16_when_the_trainer_does(parity_verifier, tmp_path):
    overrides = [o for o in VLLM if o != "rollout.engine=vllm"]
    _, run = train(_config(tmp_path, *overrides, "rollout.engine=auto", "trainer.precision=bf16-mixed",
                           "trainer.max_steps=1"))
    engine = run["module"].collector.engine
    assert type(engine).__name__ == "VLLMEngine"
    assert engine.llm.llm_engine.model_config.dtype == torch.bfloat16
    (row,) = run["summary"].history
    # bf16 sampling against the fp32 weights under bf16 autocast: a small, measured, corrected mismatch
    assert 0 < row["rollout_corr/logprob_diff_max"] < 1.0
    assert abs(row["rollout_corr/weight_mean"] - 1) < 0.05
