"""The RL step's CLIPO wiring on the tiny model: which parameters each mode's gradient reaches,
and how the updater steps its optimizer."""

from dataclasses import replace

import pytest
import torch

from clipo.builders import build_module
from clipo.rl.collector import Trajectory
from clipo.rollout import forward_responses
from clipo.run.timing import PhaseTimer
from tests.conftest import TINY_OVERRIDES, compose_config

RECORDS = [
    {"messages": [{"role": "user", "content": f"What is {a}+{b}?"}], "ground_truth": str(a + b)}
    for a, b in [(2, 3), (4, 1)]
]
CORRECT = torch.tensor([1, 0, 1, 0, 1, 1, 0, 0], dtype=torch.bool)  # both groups mixed: anchors exist


def _module_and_rollouts(tmp_path, *overrides):
    module = build_module(compose_config(TINY_OVERRIDES + list(overrides), output_dir=tmp_path))
    module.configure_optimizers()
    torch.manual_seed(0)
    rollouts = module.collector.engine.generate(RECORDS, 4, module.collector.sampling, hidden_layer=-1)
    return module, rollouts


def _batch(module, rollouts, advantages):
    return Trajectory(rollouts, CORRECT.float(), CORRECT, CORRECT.float(), advantages)


def _update(module, rollouts, advantages, optimizer):
    return module.updater.update(_batch(module, rollouts, advantages), optimizer, lambda loss: loss.backward(), PhaseTimer())


def test_each_mode_builds_only_its_own_stage(tmp_path):
    reward = build_module(compose_config(TINY_OVERRIDES, output_dir=tmp_path))
    assert reward.collector.reward_shaping is not None and reward.updater.contrastive is None
    assert reward.collector.capture_layer == -1 and reward.updater.hidden_layer is None  # hf captures them
    assert reward.collector.logprobs.hidden_layer is None and not reward.updater.batching.whole_groups
    loss = build_module(compose_config(TINY_OVERRIDES + ["contrastive.mode=loss"], output_dir=tmp_path))
    assert loss.collector.reward_shaping is None and loss.updater.contrastive is not None
    assert loss.collector.capture_layer is None and loss.updater.hidden_layer == -1
    assert loss.updater.batching.whole_groups  # the contrastive term is taken per forward pass, over whole groups
    off = build_module(compose_config(TINY_OVERRIDES + ["loss=none"], output_dir=tmp_path))
    assert off.collector.reward_shaping is None and off.updater.contrastive is None
    assert off.collector.capture_layer is None and off.updater.hidden_layer is None


def test_reward_mode_trains_the_head_and_never_touches_the_policy(tmp_path):
    module, rollouts = _module_and_rollouts(tmp_path)
    head_before = {k: v.detach().clone() for k, v in module.contrastive.named_parameters()}
    rewards = CORRECT.float()
    shaped, out = module.collector.reward_shaping(rollouts.hidden, rollouts.response_mask, CORRECT, rollouts.groups, rewards)
    metrics = out.metrics

    assert all(p.grad is None for p in module.policy.parameters()), "reward mode sent gradient into the policy"
    assert any(not torch.equal(head_before[k], v) for k, v in module.contrastive.named_parameters())
    # wrong rollouts keep their reward; correct ones get r + max(c - lam * L, floor) in [r - 0.5, r]
    assert torch.equal(shaped[~CORRECT], rewards[~CORRECT])
    bonus = shaped[CORRECT] - 1.0
    assert (bonus <= 0).all() and (bonus >= -0.5).all() and (bonus < 0).any()
    assert metrics["contrastive/anchor_frac"] > 0


def test_loss_mode_sends_contrastive_gradient_into_the_policy(tmp_path):
    module, rollouts = _module_and_rollouts(tmp_path, "contrastive.mode=loss")
    out = forward_responses(module.policy, rollouts, hidden_layer=module.updater.hidden_layer)
    c_out = module.contrastive(out.hidden, rollouts.hidden_mask, CORRECT, rollouts.groups)
    c_out.batch_loss.backward()
    grads = [p.grad for p in module.policy.get_decoder().layers.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert module.collector.reward_shaping is None  # and no reward bonus


@pytest.mark.parametrize("extra", [[], ["ppo.mini_batch_size=4", "ppo.micro_batch_size=2", "ppo.epochs=2"]])
def test_update_steps_the_optimizer_once_per_mini_batch(tmp_path, extra):
    module, rollouts = _module_and_rollouts(tmp_path, "loss=none", *extra)
    optimizer = module.configure_optimizers()
    steps = []
    original_step = optimizer.step
    optimizer.step = lambda *a, **k: (steps.append(1), original_step(*a, **k))
    metrics = _update(module, rollouts, torch.randn(8), optimizer)
    expected = 1 if not extra else 2 * 2  # (8 rollouts / 4 per mini-batch) x 2 epochs
    assert len(steps) == expected
    assert torch.isfinite(metrics["actor/pg_loss"]) and metrics["actor/grad_norm"] > 0


def test_non_finite_gradient_skips_the_update_and_stops_after_too_many(tmp_path):
    module, rollouts = _module_and_rollouts(tmp_path, "loss=none", "ppo.max_nonfinite_updates=2")
    optimizer = module.configure_optimizers()
    poison = lambda loss: (loss * float("nan")).backward()  # noqa: E731  (poisons every gradient)
    before = {k: v.clone() for k, v in module.policy.state_dict().items()}

    batch = _batch(module, rollouts, torch.randn(8))
    metrics = module.updater.update(batch, optimizer, poison, PhaseTimer())
    assert metrics["numerics/skipped_updates"] == 1 and not torch.isfinite(metrics["actor/grad_norm"])
    assert all(torch.equal(before[k], v) for k, v in module.policy.state_dict().items())  # nothing applied
    assert all(p.grad is None for p in module.policy.parameters())  # and nothing carried over
    with pytest.raises(FloatingPointError, match="2 updates in a row had a non-finite loss or gradient"):
        module.updater.update(batch, optimizer, poison, PhaseTimer())


def test_loss_mode_update_trains_the_head_with_the_policy(tmp_path):
    module, rollouts = _module_and_rollouts(tmp_path, "contrastive.mode=loss")
    optimizer = module.configure_optimizers()
    head_before = {k: v.detach().clone() for k, v in module.contrastive.named_parameters()}
    metrics = _update(module, rollouts, torch.randn(8), optimizer)
    assert any(not torch.equal(head_before[k], v) for k, v in module.contrastive.named_parameters())
    assert all(p.grad is None for p in module.contrastive.parameters())  # stepped and cleared, nothing piles up
    assert metrics["contrastive/anchor_frac"] > 0


@pytest.mark.parametrize("mode", ["loss=none", "contrastive.mode=loss"])
def test_token_budget_micro_batches_give_the_full_batch_gradient(tmp_path, mode):
    """ppo.max_tokens_per_micro_batch: several packed forward passes, the gradient of one pass over all 8."""
    grads, passes = [], []
    for budget in [None, "budget"]:
        module, rollouts = _module_and_rollouts(tmp_path, mode, "ppo.micro_batch_size=8")
        updater = module.updater
        # two groups of 4: loss mode packs whole groups (one a pass; each group has 2 anchors, so the mean of the
        # per-pass contrastive losses is the batch's), otherwise about 2 rollouts a pass
        if budget:  # counted as the shared-prompt forward computes: each group's prompt once, padded responses
            prompts = rollouts.attention_mask[:, : rollouts.prompt_len].sum(-1).tolist()
            responses, groups = rollouts.response_mask.sum(-1).tolist(), rollouts.groups.tolist()
            group = max(updater.batching.forward.tokens(prompts[g * 4 : g * 4 + 4], responses[g * 4 : g * 4 + 4],
                                                        groups[g * 4 : g * 4 + 4]) for g in range(2))
            budget = group if "contrastive" in mode else group // 2
        updater.batching = replace(updater.batching, token_budget=budget, grow_budget=True)
        optimizer = module.configure_optimizers()
        updater.clip_and_step = lambda opt, m=module: (
            grads.append({k: p.grad.clone() for k, p in m.policy.named_parameters() if p.grad is not None}),
            opt.zero_grad(), torch.tensor(1.0))[-1]
        calls = []
        module.policy.get_decoder().register_forward_pre_hook(lambda *_: calls.append(1))
        torch.manual_seed(1)
        _update(module, rollouts, torch.randn(8), optimizer)
        passes.append(len(calls) // 2)  # the shared prompt's two decoder calls a pass
    assert passes[1] > passes[0] == 1  # really split into several forward passes
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("extra, reuses", [([], False), (["ppo.epochs=2"], True), (["ppo.mini_batch_size=4"], True)])
def test_collector_takes_pi_old_only_when_the_update_reuses_the_batch(tmp_path, extra, reuses):
    module = build_module(compose_config(TINY_OVERRIDES + extra, output_dir=tmp_path))
    assert module.collector.logprobs.old_before_update is reuses  # decided once, by the builders
    assert module.updater.batching.reuses_batch(len(CORRECT)) is reuses  # 2 prompts x 4 rollouts


def test_one_step_update_takes_the_importance_weights_from_its_own_forward(tmp_path):
    """With one optimizer step, pi_old is the update's own forward (detached): the weights it computes
    there give the gradient and the mismatch metrics of weights taken in a pass before, without that pass."""
    from clipo.algorithms.rollout_correction import importance_weights
    from clipo.rl.old_policy import ImportanceCorrection

    module, rollouts = _module_and_rollouts(tmp_path, "loss=none", "ppo.micro_batch_size=4")
    updater, logprobs = module.updater, module.collector.logprobs
    updater.sampler_logprobs, updater.correction = True, ImportanceCorrection()  # as built for an engine with them
    old, _ = logprobs._forward(module.policy, rollouts, None)  # the pass the collector makes when the batch is reused
    mask = rollouts.response_mask.bool()
    torch.manual_seed(2)
    rollouts.sampling_logprobs = torch.where(mask, old + 0.5 * torch.randn_like(old), 0.0)  # an engine's log-probs
    _, expected = importance_weights(old, rollouts.sampling_logprobs, mask, updater.correction.cap)
    assert 0 < expected["rollout_corr/capped_frac"] < 1  # the cap and the weights matter
    advantages = torch.randn(8)
    grads, metrics, passes = [], [], []
    updater.clip_and_step = lambda opt: (
        grads.append({k: p.grad.clone() for k, p in module.policy.named_parameters() if p.grad is not None}),
        opt.zero_grad(), torch.tensor(1.0))[-1]  # no step: both updates start from the same weights
    calls = []
    module.policy.get_decoder().register_forward_pre_hook(lambda *_: calls.append(1))
    optimizer = module.configure_optimizers()
    for taken in [old, None]:
        calls.clear()
        batch = Trajectory(rollouts, CORRECT.float(), CORRECT, CORRECT.float(), advantages, old_logprobs=taken)
        metrics.append(updater.update(batch, optimizer, lambda loss: loss.backward(), PhaseTimer()))
        passes.append(len(calls))
    assert passes[1] == passes[0] > 0  # the same forward passes: none added for pi_old
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-5)
    for key, value in expected.items():  # both report the mismatch over the whole batch
        torch.testing.assert_close(metrics[0][key], value, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(metrics[1][key], value, atol=1e-6, rtol=1e-5)


def test_the_sampler_correction_is_planned_for_an_engine_that_reports_its_log_probs(tmp_path):
    from clipo.builders import build_updater
    from clipo.rl.batching import UpdateBatching
    from clipo.rl.old_policy import ImportanceCorrection

    cfg = compose_config(TINY_OVERRIDES + ["rollout.importance_sampling.level=sequence",
                                           "rollout.importance_sampling.mode=mask"], output_dir=tmp_path)
    module = build_module(cfg)  # the hf engine samples from the trainer's own distribution: nothing to correct
    assert not module.updater.sampler_logprobs and module.updater.correction is None
    batching, sampling = module.updater.batching, module.collector.sampling
    built = build_updater(cfg, module.policy, module.updater.algorithm, batching, sampling, None, sampler_logprobs=True)
    assert built.correction == ImportanceCorrection(2.0, "sequence", "mask")
    cfg.rollout.importance_sampling.enabled = False
    off = build_updater(cfg, module.policy, module.updater.algorithm, batching, sampling, None, sampler_logprobs=True)
    assert off.sampler_logprobs and off.correction is None
    assert isinstance(batching, UpdateBatching)
