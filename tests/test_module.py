"""The LightningModule's CLIPO wiring on the tiny model: which parameters each mode's gradient reaches."""

import pytest
import torch

from clipo.builders import build_module
from clipo.rollout import forward_responses, generate_rollouts
from tests.conftest import TINY_OVERRIDES, compose_config

RECORDS = [
    {"messages": [{"role": "user", "content": f"What is {a}+{b}?"}], "ground_truth": str(a + b)}
    for a, b in [(2, 3), (4, 1)]
]


def _module_and_rollouts(tmp_path, *overrides):
    module = build_module(compose_config(TINY_OVERRIDES + list(overrides), output_dir=tmp_path))
    module.configure_optimizers()
    torch.manual_seed(0)
    layer = module.contrastive.layer
    rollouts = generate_rollouts(module.policy, module.tokenizer, RECORDS, 4, module.generation, capture_layer=layer)
    correct = torch.tensor([1, 0, 1, 0, 1, 1, 0, 0], dtype=torch.bool)  # both groups mixed: anchors exist
    return module, rollouts, correct


def test_reward_mode_trains_the_head_and_never_touches_the_policy(tmp_path):
    module, rollouts, correct = _module_and_rollouts(tmp_path)
    head_before = {k: v.detach().clone() for k, v in module.contrastive.named_parameters()}
    rewards = correct.float()
    shaped, metrics = module._shape_rewards(rollouts, rewards, correct)

    assert all(p.grad is None for p in module.policy.parameters()), "reward mode sent gradient into the policy"
    assert any(not torch.equal(head_before[k], v) for k, v in module.contrastive.named_parameters())
    # wrong rollouts keep their reward; correct ones get r + max(c - lam * L, floor) in [r - 0.5, r]
    assert torch.equal(shaped[~correct], rewards[~correct])
    bonus = shaped[correct] - 1.0
    assert (bonus <= 0).all() and (bonus >= -0.5).all() and (bonus < 0).any()
    assert metrics["contrastive/anchor_frac"] > 0


def test_loss_mode_sends_contrastive_gradient_into_the_policy(tmp_path):
    module, rollouts, correct = _module_and_rollouts(tmp_path, "contrastive.mode=loss")
    layer = module.contrastive.layer
    out = forward_responses(module.policy, rollouts, hidden_layer=layer)
    c_out = module.contrastive(out.hidden, rollouts.response_mask, correct, rollouts.groups)
    c_out.batch_loss.backward()
    grads = [p.grad for p in module.policy.get_decoder().layers.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert torch.equal(c_out.bonus, torch.zeros_like(c_out.bonus))


@pytest.mark.parametrize("extra", [[], ["ppo.mini_batch_size=4", "ppo.micro_batch_size=2", "ppo.epochs=2"]])
def test_update_steps_the_optimizer_once_per_mini_batch(tmp_path, extra):
    module, rollouts, correct = _module_and_rollouts(tmp_path, "loss=none", *extra)
    optimizer = module.configure_optimizers()
    steps = []
    module.optimizers = lambda: optimizer  # outside a Trainer: the raw optimizer
    module.manual_backward = lambda loss: loss.backward()
    original_step = optimizer.step
    optimizer.step = lambda *a, **k: (steps.append(1), original_step(*a, **k))
    advantages = torch.randn(8)
    metrics = module._update_policy(rollouts, advantages, correct, *module._old_and_reference_logprobs(rollouts))
    expected = 1 if not extra else 2 * 2  # (8 rollouts / 4 per mini-batch) x 2 epochs
    assert len(steps) == expected
    assert torch.isfinite(metrics["actor/pg_loss"]) and metrics["actor/grad_norm"] > 0


def test_non_finite_gradient_skips_the_update_and_stops_after_too_many(tmp_path):
    module, rollouts, correct = _module_and_rollouts(tmp_path, "loss=none", "ppo.max_nonfinite_updates=2")
    optimizer = module.configure_optimizers()
    module.optimizers = lambda: optimizer
    module.manual_backward = lambda loss: (loss * float("nan")).backward()  # poison every gradient
    before = {k: v.clone() for k, v in module.policy.state_dict().items()}

    metrics = module._update_policy(rollouts, torch.randn(8), correct, *module._old_and_reference_logprobs(rollouts))
    assert metrics["numerics/skipped_updates"] == 1 and not torch.isfinite(metrics["actor/grad_norm"])
    assert all(torch.equal(before[k], v) for k, v in module.policy.state_dict().items())  # nothing applied
    assert all(p.grad is None for p in module.policy.parameters())  # and nothing carried over
    with pytest.raises(FloatingPointError, match="2 updates in a row had a non-finite loss or gradient"):
        module._update_policy(rollouts, torch.randn(8), correct, *module._old_and_reference_logprobs(rollouts))


def test_loss_mode_update_trains_the_head_with_the_policy(tmp_path):
    module, rollouts, correct = _module_and_rollouts(tmp_path, "contrastive.mode=loss")
    optimizer = module.configure_optimizers()
    module.optimizers = lambda: optimizer
    module.manual_backward = lambda loss: loss.backward()
    head_before = {k: v.detach().clone() for k, v in module.contrastive.named_parameters()}
    metrics = module._update_policy(rollouts, torch.randn(8), correct, *module._old_and_reference_logprobs(rollouts))
    assert any(not torch.equal(head_before[k], v) for k, v in module.contrastive.named_parameters())
    assert all(p.grad is None for p in module.contrastive.parameters())  # stepped and cleared, nothing piles up
    assert metrics["contrastive/anchor_frac"] > 0


@pytest.mark.parametrize("mode", ["loss=none", "contrastive.mode=loss"])
def test_token_budget_micro_batches_give_the_full_batch_gradient(tmp_path, mode):
    """ppo.max_tokens_per_micro_batch: several packed forward passes, the gradient of one pass over all 8."""
    grads, passes = [], []
    for budget in [None, "budget"]:
        module, rollouts, correct = _module_and_rollouts(tmp_path, mode, "ppo.micro_batch_size=8")
        # two groups of 4: loss mode packs whole groups (one a pass; each group has 2 anchors, so the mean of the
        # per-pass contrastive losses is the batch's), otherwise about 2 rollouts a pass
        if budget:
            longest = int(rollouts.attention_mask.sum(-1).max())
            module.max_tokens_per_micro_batch = (4 if "contrastive" in mode else 2) * longest
        optimizer = module.configure_optimizers()
        module.optimizers = lambda opt=optimizer: opt
        module.manual_backward = lambda loss: loss.backward()
        module._clip_and_step = lambda opt, m=module: (
            grads.append({k: p.grad.clone() for k, p in m.policy.named_parameters() if p.grad is not None}),
            opt.zero_grad(), torch.tensor(1.0))[-1]
        calls = []
        module.policy.get_decoder().register_forward_pre_hook(lambda *_: calls.append(1))
        torch.manual_seed(1)
        module._update_policy(rollouts, torch.randn(8), correct, *module._old_and_reference_logprobs(rollouts))
        passes.append(len(calls))
    assert passes[1] > passes[0]  # really split into several forward passes
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-5)
