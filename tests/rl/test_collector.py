"""The collector on its own, with stand-in parts: an engine of hand-made rollouts, rewards given per
rollout, planned log-prob passes that report what they were asked. It builds one plain trajectory:
rewards, shaping, advantages, the passes' results, and generation inside one context, refills included."""

from contextlib import contextmanager

import torch

from clipo.advantages import GRPOAdvantage, grpo_advantages
from clipo.rl.collector import RolloutCollector, Trajectory
from clipo.rl.dynamic_sampling import DynamicSampling, OverlongShaping
from clipo.rl.old_policy import PassResults
from clipo.rl.rewards import RewardScores
from clipo.rollout.batch import RolloutBatch
from clipo.rollout.sampling import Sampling
from clipo.run.timing import PhaseTimer

G = 2


class HandMadeEngine:
    """Two rollouts a record; response i of a call has i + 1 tokens (so lengths differ); no hidden states."""

    gives_hidden_states, gives_sampling_logprobs = False, False

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []

    def generate(self, records, group_size, sampling, hidden_layer=None) -> RolloutBatch:
        self.calls.append((len(records), hidden_layer))
        n, T = len(records) * group_size, 3
        response_mask = torch.arange(T) < (torch.arange(n) % T + 1)[:, None]
        return RolloutBatch(
            sequences=torch.ones(n, 2 + T, dtype=torch.long), attention_mask=torch.cat(
                [torch.ones(n, 2, dtype=torch.long), response_mask.long()], 1), response_mask=response_mask,
            prompt_len=2, groups=torch.arange(len(records)).repeat_interleave(group_size), prompts=[""] * n,
            responses=[f"{r['ground_truth']}/{i}" for r in records for i in range(group_size)],
            ground_truths=[r["ground_truth"] for r in records for _ in range(group_size)],
            truncated=torch.zeros(n, dtype=torch.bool))


class GivenRewards:
    """Each record's `rewards` field, one value per rollout, as the verifier's (correct when > 0.5)."""

    def __call__(self, records, rollouts, trainer_state=None) -> RewardScores:
        values = torch.tensor([v for r in records for v in r["rewards"]], dtype=torch.float32)
        return RewardScores(["verifier"], torch.ones(1), values[:, None], values > 0.5, [""] * len(values))


class PlannedPasses:
    """Stands in for `LogprobPasses`: returns hidden states [N, T, 4] and, when the update reuses the batch, pi_old."""

    hidden_layer = -1

    def __init__(self, old_before_update: bool) -> None:
        self.old_before_update, self.asked = old_before_update, []

    def __call__(self, rollouts, update=True) -> PassResults:
        self.asked.append(update)
        shape = rollouts.response_mask.shape
        old = torch.full(shape, -1.0) if update and self.old_before_update else None
        return PassResults(old, None, torch.ones(*shape, 4), 1 + int(old is not None))


class Verifier:
    def stats(self):
        return {"timeouts": 0}

    def close(self):
        pass


def record(truth, rewards):
    return {"messages": [], "ground_truth": truth, "rewards": rewards}


def collector(**parts) -> RolloutCollector:
    return RolloutCollector(HandMadeEngine(), Verifier(), GivenRewards(), GRPOAdvantage(), Sampling(max_new_tokens=3),
                            G, parts.pop("logprobs", PlannedPasses(False)), **parts)


def collect(c, records, refills=()):
    entered = []

    @contextmanager
    def context():
        entered.append("in")
        yield
        entered.append("out")

    more = iter(refills)
    return c.collect(records, 0, lambda: [next(more)], PhaseTimer(), context), entered


def test_one_plain_trajectory_with_advantages_of_the_shaped_rewards():
    c = collector(overlong=OverlongShaping(max_len=3, buffer=2, penalty=1.0))
    trajectory, entered = collect(c, [record("a", [1.0, 0.0]), record("b", [1.0, 1.0])])
    assert isinstance(trajectory, Trajectory) and entered == ["in", "out"]
    assert trajectory.rewards.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert trajectory.correct.tolist() == [True, False, True, True]
    # lengths 1, 2, 3, 1: overlong penalty -(len - 1) / 2 beyond max_len - buffer = 1 token
    torch.testing.assert_close(trajectory.shaped_rewards, torch.tensor([1.0, -0.5, 0.0, 1.0]))
    torch.testing.assert_close(trajectory.advantages, grpo_advantages(trajectory.shaped_rewards, trajectory.rollouts.groups))
    assert trajectory.old_logprobs is None and trajectory.update_policy and trajectory.forward_passes == 1
    assert trajectory.rollouts.hidden.shape == (4, 3, 4)  # from the planned pass: the engine gave none
    assert c.engine.calls == [(2, None)]  # nothing to capture while sampling
    assert trajectory.metrics["train/reward"] == 0.75 and trajectory.metrics["train/zero_var_group_frac"] == 0.5


def test_pi_old_comes_from_the_pass_when_the_update_reuses_the_batch():
    passes = PlannedPasses(old_before_update=True)
    trajectory, _ = collect(collector(logprobs=passes), [record("a", [1.0, 0.0])])
    assert torch.equal(trajectory.old_logprobs, torch.full((2, 3), -1.0)) and trajectory.forward_passes == 2
    assert passes.asked == [True]


def test_refills_run_inside_the_one_generation_context():
    """The first batch has no variance in group "a"; dynamic sampling refills twice, all inside one context (under
    ZeRO-3 the weights are gathered once, however many times each rank refills)."""
    c = collector(dynamic_sampling=DynamicSampling(pad_token_id=0, max_refill_batches=3))
    refills = [record("b", [1.0, 1.0]), record("c", [0.0, 1.0])]
    trajectory, entered = collect(c, [record("a", [0.0, 0.0])], refills)
    assert entered == ["in", "out"] and len(c.engine.calls) == 3
    assert trajectory.rollouts.ground_truths == ["c", "c"]  # the one group with variance is kept
    assert trajectory.metrics["dapo/refills"] == 2


def test_during_the_head_warm_up_only_the_hidden_states_are_taken():
    class Waiting:
        def policy_waits(self, step):
            return True

        def __call__(self, hidden, mask, correct, groups, rewards):
            from clipo.contrastive.modes import RewardShapingOutput

            return rewards + 0.5, RewardShapingOutput(torch.zeros_like(rewards), torch.full_like(rewards, 0.5))

    passes = PlannedPasses(old_before_update=True)
    trajectory, _ = collect(collector(logprobs=passes, reward_shaping=Waiting()), [record("a", [1.0, 0.0])])
    assert passes.asked == [False] and not trajectory.update_policy and trajectory.old_logprobs is None
    torch.testing.assert_close(trajectory.shaped_rewards, torch.tensor([1.5, 0.5]))
