"""CLIPO's mode adapters on their own, with a stand-in objective whose per-rollout losses are given: the mode
table, reward shaping's bonus and warm-up, the loss term's share, and the head's step."""

import pytest
import torch

from clipo.contrastive.modes import (
    ContrastiveLossTerm,
    ContrastiveMode,
    ContrastiveRewardShaping,
    HeadStep,
    anchor_share,
)
from clipo.contrastive.objective import ContrastiveOutput


class GivenLosses(torch.nn.Module):
    """A stand-in objective: L_i = scale * `losses[i]` on the rollouts `correct` marks (the anchors), 0 elsewhere;
    `scale` is its one trainable weight, so the head's step is visible."""

    def __init__(self, losses: list[float]) -> None:
        super().__init__()
        self.losses, self.scale = torch.tensor(losses), torch.nn.Parameter(torch.tensor(1.0))
        self.seen_grad: list[bool] = []

    def forward(self, hidden, mask, correct, groups) -> ContrastiveOutput:
        self.seen_grad.append(hidden.requires_grad)
        per_sample = self.scale * self.losses * correct.float() + 0.0 * hidden.sum()
        anchors = correct.float().sum()
        return ContrastiveOutput(per_sample, per_sample.sum() / anchors.clamp(min=1), anchors, {"contrastive/x": anchors})


def head_step(objective, lr=0.1):
    step = HeadStep(objective, lambda params: torch.optim.SGD(params, lr=lr))
    step.configure()
    return step


@pytest.mark.parametrize("loss,mode,expected", [
    ("infonce", None, ContrastiveMode.REWARD), ("supcon", "reward", ContrastiveMode.REWARD),
    ("triplet", "loss", ContrastiveMode.LOSS), ("none", None, ContrastiveMode.OFF)])
def test_the_mode_is_read_once_from_loss_and_contrastive_mode(loss, mode, expected):
    assert ContrastiveMode.resolve(loss, mode) is expected


def test_a_mode_with_loss_none_or_an_unknown_mode_says_what_to_do():
    with pytest.raises(ValueError, match="needs a contrastive loss, but loss=none"):
        ContrastiveMode.resolve("none", "loss")
    with pytest.raises(ValueError, match="contrastive.mode='both' is unknown"):
        ContrastiveMode.resolve("infonce", "both")


def test_reward_shaping_adds_the_clipped_bonus_to_correct_rollouts_and_steps_the_head():
    objective = GivenLosses([1.0, 3.0, 9.0, 0.5])
    shaping = ContrastiveRewardShaping(objective, head_step(objective), lam=0.2, c=0.0, floor=-0.5)
    correct = torch.tensor([True, True, True, False])
    hidden = torch.zeros(4, 2, 3, requires_grad=True)
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0])
    shaped, out = shaping(hidden, torch.ones(4, 2, dtype=torch.bool), correct, torch.zeros(4), rewards)
    # bonus_i = max(0 - 0.2 L_i, -0.5) on correct rollouts: -0.2, -0.6 -> -0.5 (floor), -1.8 -> -0.5; wrong: 0
    torch.testing.assert_close(out.bonus, torch.tensor([-0.2, -0.5, -0.5, 0.0]))
    torch.testing.assert_close(shaped, torch.tensor([0.8, 0.5, 0.5, 0.0]))
    assert objective.seen_grad == [False]  # representations detached: no gradient can reach the policy
    # the losses are those before the head's step; the step: d/dscale of mean(L) = (1 + 3 + 9) / 3, lr 0.1
    torch.testing.assert_close(out.loss, torch.tensor([1.0, 3.0, 9.0, 0.0]))
    torch.testing.assert_close(objective.scale.detach(), torch.tensor(1.0 - 0.1 * 13 / 3))


@pytest.mark.parametrize("warmup,waits", [(0, [False, False]), (1, [False, False]), (3, [True, True, False])])
def test_the_policy_waits_for_the_head_as_critic_warmup_counts(warmup, waits):
    objective = GivenLosses([0.0])
    shaping = ContrastiveRewardShaping(objective, head_step(objective), head_warmup_steps=warmup)
    assert [shaping.policy_waits(step) for step in range(len(waits))] == waits


def test_loss_term_is_coef_times_the_loss_weighted_by_the_micro_batch_share():
    objective = GivenLosses([2.0, 4.0])
    term = ContrastiveLossTerm(objective, head_step(objective), coef=0.5, hidden_layer=-1)
    hidden = torch.zeros(2, 1, 3, requires_grad=True)
    loss, metrics = term(hidden, torch.ones(2, 1, dtype=torch.bool), torch.tensor([True, True]), torch.zeros(2), 2, 8)
    torch.testing.assert_close(loss, torch.tensor(0.5 * 3.0 * 2 / 8))  # coef x mean loss x 2 of the 8 rollouts
    assert objective.seen_grad == [True] and metrics["contrastive/x"] == 2  # the policy's graph is kept
    loss.backward()
    term.after_update()  # the head steps with the policy update, on the same backward
    assert objective.scale.grad is None and objective.scale.item() != 1.0


def test_negative_weights_are_refused_with_the_reason():
    objective = GivenLosses([0.0])
    with pytest.raises(ValueError, match="contrastive.lam=-0.1 must be >= 0"):
        ContrastiveRewardShaping(objective, head_step(objective), lam=-0.1)
    with pytest.raises(ValueError, match="contrastive.coef=-1.0 must be >= 0"):
        ContrastiveLossTerm(objective, head_step(objective), coef=-1.0, hidden_layer=-1)


def test_one_process_holds_the_whole_anchor_share_and_a_fixed_head_has_no_optimizer():
    assert anchor_share(torch.tensor(3.0)) == 1.0 and anchor_share(torch.tensor(0.0)) == 0.0
    frozen = GivenLosses([1.0]).requires_grad_(False)
    step = head_step(frozen)
    assert step.optimizer is None and step.state_dict() is None
    step.step()  # nothing to step: no error
