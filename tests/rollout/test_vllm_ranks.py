"""`rollout.engine=vllm` beside every rank: 2 CPU processes (gloo) under ddp, deepspeed_zero2, deepspeed_zero3
(every parameter partitioned) and fsdp, each rank sampling its own prompts with its own engine (vLLM's
`external_launcher`), weights pushed from the shards after each update; and the asynchronous pipeline on the
colocated engines. One launch (`tests/vllm_ranks.py`) runs every training, one after another in the same two
processes (made once per session, `tests/rollout/conftest.py`). Skipped without vLLM or DeepSpeed."""

from __future__ import annotations

import pytest
import torch

from tests.rollout.conftest import KL_TOL, LOGPROB_TOL, needs

pytestmark = needs("vllm", "deepspeed")
STRATEGIES = ["ddp", "zero2", "zero3", "fsdp"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_rank_samples_its_own_prompts_from_the_pushed_weights(vllm_ranks, strategy):
    ranks = vllm_ranks[strategy]
    for step in range(2):  # the ranks' prompts of a step are disjoint shares of the global batch
        assert not set(ranks[0]["steps"][step]["prompts"]) & set(ranks[1]["steps"][step]["prompts"])
    assert [r["pushes"] for r in ranks] == [2, 2]  # the start weights, then the first update's
    first, second = (step["embedding"] for step in ranks[0]["steps"])
    assert (second - first).abs().max() > 1e-3  # the update moved the weights: a stale engine would show
    torch.testing.assert_close(ranks[1]["steps"][1]["embedding"], second)  # both ranks push the same weights
    for row in ranks[0]["history"]:  # step 2 sampled from the pushed update
        assert row["rollout_corr/logprob_diff_max"] < LOGPROB_TOL and row["rollout_corr/kl"] < KL_TOL
        assert abs(row["rollout_corr/weight_mean"] - 1) < LOGPROB_TOL


def test_colocated_engines_sample_ahead_one_version_behind_and_the_correction_sees_it(vllm_ranks):
    rows = vllm_ranks["ddp-async"][0]["history"]
    assert [row["async/staleness_max"] for row in rows] == [0, 1, 1]
    assert [row["async/staleness_mean"] for row in rows] == [0, 1, 1]
    assert rows[0]["rollout_corr/kl"] < KL_TOL  # sampled now, by the policy it trains
    for row in rows[1:]:  # sampled by the policy one update older: pi_old / pi_sampler is no longer 1
        assert row["rollout_corr/kl"] > 100 * KL_TOL and row["rollout_corr/logprob_diff_max"] > 10 * LOGPROB_TOL
