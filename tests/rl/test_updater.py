"""The updater on its own, with a stand-in forward: each rollout's log-probs are rows of one parameter, so the
gradient and every step can be computed by hand. Epochs x mini-batches x micro-batches, accumulation equal
to the full batch, pi_old taken or on-policy, the sampler correction, stand-in micro-batches, skipped steps."""

import pytest
import torch

from clipo.algorithms import StepNormalizer
from clipo.registry import ALGORITHMS, register_components
from clipo.rl.batching import UpdateBatching
from clipo.rl.collector import Trajectory
from clipo.rl.old_policy import ImportanceCorrection
from clipo.rl.updater import PolicyUpdater
from clipo.rollout.batch import RolloutBatch
from clipo.rollout.forward import ForwardOutput
from clipo.run.timing import PhaseTimer

N, T = 8, 3


class RowsForward:
    """Stands in for `TrainingForward`: rollout j's log-probs are `policy.rows[j]` (its id in sequences[:, 0])."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, model, rollouts, temperature=1.0, hidden_layer=None, with_entropy=False, with_logprobs=True,
                 head_chunks=None) -> ForwardOutput:
        ids = rollouts.sequences[:, 0]
        self.calls.append(ids.tolist())
        logprobs = model.rows[ids] * rollouts.response_mask
        return ForwardOutput(logprobs, torch.zeros_like(logprobs), None)

    def head_chunks(self, positions):
        return 1

    def tokens(self, prompts, responses, groups):
        return sum(prompts) + sum(responses)


class Rows(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rows = torch.nn.Parameter(-torch.rand(N, T, generator=torch.Generator().manual_seed(0)))


def trajectory(**fields) -> Trajectory:
    response_mask = torch.arange(T) < torch.tensor([3, 1, 2, 3, 2, 2, 1, 3])[:, None]
    rollouts = RolloutBatch(
        sequences=torch.arange(N)[:, None].repeat(1, 1 + T), attention_mask=torch.ones(N, 1 + T, dtype=torch.long),
        response_mask=response_mask, prompt_len=1, groups=torch.arange(N) // 4, prompts=[""] * N, responses=[""] * N,
        ground_truths=[""] * N, truncated=torch.zeros(N, dtype=torch.bool))
    rollouts.sampling_logprobs = fields.pop("sampling_logprobs", None)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 0.25, -0.25])
    return Trajectory(rollouts, advantages, advantages > 0, advantages, advantages, **fields)


def updater(policy, **batching) -> PolicyUpdater:
    register_components()
    plan = UpdateBatching(RowsForward(), **batching)
    return PolicyUpdater(policy, ALGORITHMS.build({"name": "grpo"}), plan, temperature=1.0, max_len=T,
                         max_grad_norm=None)


def full_batch_gradient(batch: Trajectory) -> torch.Tensor:
    """The token-mean GRPO loss over all 8 rollouts at ratio 1 (pi_old = pi): d/d rows = -A_j / tokens."""
    mask = batch.rollouts.response_mask
    return -(batch.advantages[:, None] * mask) / mask.sum()


def test_accumulated_micro_batches_give_the_full_batch_gradient():
    policy, grads = Rows(), []
    batch = trajectory()
    for micro in (8, 3):  # one pass, or 3 + 3 + 2
        u = updater(policy, micro_batch_size=micro)
        u.clip_and_step = lambda opt, u=u: (grads.append(policy.rows.grad.clone()), opt.zero_grad(), torch.tensor(1.0))[-1]
        u.update(batch, torch.optim.SGD(policy.parameters(), lr=0.0), lambda loss: loss.backward(), PhaseTimer())
        assert [len(c) for c in u.batching.forward.calls] == ([8] if micro == 8 else [3, 3, 2])
    torch.testing.assert_close(grads[0], full_batch_gradient(batch))
    torch.testing.assert_close(grads[1], grads[0])


@pytest.mark.parametrize("epochs,mini,steps", [(1, None, 1), (2, None, 2), (1, 4, 2), (2, 4, 4)])
def test_one_optimizer_step_per_mini_batch_and_epoch(epochs, mini, steps):
    policy = Rows()
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
    counted = []
    optimizer.register_step_post_hook(lambda *args: counted.append(1))
    metrics = updater(policy, epochs=epochs, mini_batch_size=mini, micro_batch_size=4).update(
        trajectory(), optimizer, lambda loss: loss.backward(), PhaseTimer())
    assert len(counted) == steps and torch.isfinite(metrics["actor/loss"])


def test_taken_pi_old_is_used_and_on_policy_takes_the_forwards_own():
    policy = Rows()
    u = updater(policy, micro_batch_size=8)
    grads = []
    u.clip_and_step = lambda opt: (grads.append(policy.rows.grad.clone()), opt.zero_grad(), torch.tensor(1.0))[-1]
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)
    on_policy = trajectory()
    taken = trajectory(old_logprobs=policy.rows.detach() - 1.0)  # pi_old 1 nat below: ratio e, clipped at 1.2
    metrics = [u.update(t, optimizer, lambda loss: loss.backward(), PhaseTimer()) for t in (on_policy, taken)]
    assert metrics[0]["actor/ratio_mean"] == 1.0 and metrics[1]["actor/ratio_mean"] > 2.7
    # ratio e: positive advantages are clipped (no gradient), negative ones are not and weigh e
    clipped = (on_policy.advantages > 0)[:, None]
    expected = torch.where(clipped, 0.0, torch.e * full_batch_gradient(on_policy))
    torch.testing.assert_close(grads[1], expected)


def test_the_sampler_correction_weighs_each_token_and_the_mismatch_is_measured():
    policy = Rows()
    sampler = (policy.rows.detach() - 1.0) * trajectory().rollouts.response_mask  # sampler 1 nat lower
    u = updater(policy, micro_batch_size=4)
    u.sampler_logprobs, u.correction = True, ImportanceCorrection(cap=2.0)
    grads = []
    u.clip_and_step = lambda opt: (grads.append(policy.rows.grad.clone()), opt.zero_grad(), torch.tensor(1.0))[-1]
    metrics = u.update(trajectory(sampling_logprobs=sampler), torch.optim.SGD(policy.parameters(), lr=0.0),
                       lambda loss: loss.backward(), PhaseTimer())
    # min(pi_old / pi_sampler, cap) = min(e, 2) = 2 on every token: twice the plain gradient
    torch.testing.assert_close(grads[0], 2.0 * full_batch_gradient(trajectory()))
    assert metrics["rollout_corr/capped_frac"] == 1
    torch.testing.assert_close(metrics["rollout_corr/logprob_diff_mean"], torch.tensor(1.0))


def test_a_stand_in_micro_batch_runs_but_adds_nothing(monkeypatch):
    """Another rank needs 3 passes, this one 2: the third repeats a rollout with its loss times 0."""
    from clipo.rl import batching

    other_rank = iter([torch.tensor(3), torch.tensor([1, 1, 1])] * 2)
    monkeypatch.setattr(batching, "max_over_ranks", lambda mine: torch.maximum(mine, next(other_rank)))
    policy = Rows()
    u = updater(policy, micro_batch_size=4)
    grads = []
    u.clip_and_step = lambda opt: (grads.append(policy.rows.grad.clone()), opt.zero_grad(), torch.tensor(1.0))[-1]
    metrics = u.update(trajectory(), torch.optim.SGD(policy.parameters(), lr=0.0), lambda loss: loss.backward(),
                       PhaseTimer())
    assert [len(c) for c in u.batching.forward.calls] == [4, 4, 1]
    torch.testing.assert_close(grads[0], full_batch_gradient(trajectory()))
    torch.testing.assert_close(metrics["actor/loss"], -(trajectory().advantages[:, None] * trajectory().rollouts
                                                        .response_mask).sum() / trajectory().rollouts.response_mask.sum())


def test_a_non_finite_gradient_skips_the_step_and_too_many_stop_the_run():
    policy = Rows()
    u = updater(policy, micro_batch_size=8)
    u.max_nonfinite_updates = 2
    before = policy.rows.detach().clone()
    poison = lambda loss: (loss * float("nan")).backward()  # noqa: E731
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
    assert u.update(trajectory(), optimizer, poison, PhaseTimer())["numerics/skipped_updates"] == 1
    assert torch.equal(policy.rows.detach(), before) and policy.rows.grad is None
    with pytest.raises(FloatingPointError, match="2 updates in a row"):
        u.update(trajectory(), optimizer, poison, PhaseTimer())


def test_the_step_normaliser_counts_the_whole_mini_batch():
    u = updater(Rows())
    norm = u.step_normalizer(trajectory().rollouts.response_mask)
    assert norm == StepNormalizer(tokens=17.0, sequences=8.0, max_len=T)  # 3+1+2+3+2+2+1+3 tokens
