"""The bf16 working copy of float32 master weights: cast once (parameters, not buffers, tied ones tied),
gradients summed into the master in float32, cast again after each optimizer step and after a load; and
an update through it matches float32's within bf16's rounding."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from clipo.models import build_tiny
from clipo.run.working_copy import SDPA_FLOAT32_GRAD, WorkingCopy, sdpa_float32_grad

# bf16's unit roundoff: 8 significant bits, so a rounding errs by at most 2^-9 relative
BF16_U = 2.0**-9


def cast(master: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().to(torch.bfloat16) for p in master.parameters()]


def test_the_copy_holds_bf16_parameters_float32_buffers_and_tied_weights():
    master, _ = build_tiny()
    copy = WorkingCopy(master)
    assert {p.dtype for p in copy.module.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in master.parameters()} == {torch.float32}  # the master is untouched
    rotary = copy.module.model.rotary_emb.inv_freq
    assert rotary.dtype == torch.float32 and torch.equal(rotary, master.model.rotary_emb.inv_freq)
    assert copy.module.lm_head.weight is copy.module.model.embed_tokens.weight  # tied as in the master
    for work, expected in zip(copy.module.parameters(), cast(master)):
        assert torch.equal(work, expected)


def test_the_copys_attention_takes_gradients_in_float32_and_samples_in_bf16(monkeypatch):
    policy, _ = build_tiny(seed=0)
    copy = WorkingCopy(policy)
    assert copy.module.config._attn_implementation == SDPA_FLOAT32_GRAD and policy.config._attn_implementation == "sdpa"
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, *a, **k: seen.append(q.dtype) or real(q, *a, **k))
    ids = torch.randint(0, policy.config.vocab_size, (2, 9))
    with torch.no_grad():
        copy.module(ids)
    sampled, seen[:] = set(seen), []
    copy.module(ids).logits.float().sum().backward()
    assert sampled == {torch.bfloat16} and set(seen) == {torch.float32}
    # the same attention as SDPA's: in bf16 inputs' rounding (2^-8 relative), gradients too
    q, k, v = (torch.randn(2, 4, 7, 16, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    module = torch.nn.Module()
    module.training, module.is_causal = False, True
    out, _ = sdpa_float32_grad(module, q, k, v, None)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    expected = real(q32, k32, v32, is_causal=True).transpose(1, 2)  # transformers returns [b, t, heads, d]
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=2**-8, atol=2**-8)
    out.float().sum().backward()
    expected.sum().backward()
    for low, high in ((q, q32), (k, k32), (v, v32)):
        assert low.grad.dtype == torch.bfloat16
        torch.testing.assert_close(low.grad.float(), high.grad, rtol=2**-7, atol=2**-7)


def test_gradients_reach_the_master_summed_in_float32():
    """Two micro-batches' bf16 gradients add up in the master's float32 `.grad` (the copy keeps none), as the
    same two backward passes through the copy would give summed one by one in float32."""
    master, _ = build_tiny()
    copy = WorkingCopy(master)
    batches = [torch.randint(4, 100, (2, 9), generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    singles = []
    for ids in batches:
        copy.module(input_ids=ids).logits.float().logsumexp(-1).mean().backward()
        singles.append([p.grad.clone() for p in master.parameters()])
        master.zero_grad(set_to_none=True)
    for ids in batches:
        copy.module(input_ids=ids).logits.float().logsumexp(-1).mean().backward()
    assert all(p.grad is None for p in copy.module.parameters())
    for param, first, second in zip(master.parameters(), *singles):
        assert param.grad.dtype == torch.float32
        # the sum of two float32 numbers rounds once, in float32
        torch.testing.assert_close(param.grad, first + second, rtol=2e-7, atol=1e-12)


def test_the_copy_is_cast_again_after_each_optimizer_step_and_each_load():
    master, _ = build_tiny()
    copy = WorkingCopy(master)
    optimizer = copy.optimizer_factory(torch.optim.SGD)(master.parameters(), lr=0.1)
    copy.module(input_ids=torch.randint(4, 100, (2, 9))).logits.float().mean().backward()
    optimizer.step()
    for work, expected in zip(copy.module.parameters(), cast(master)):
        assert torch.equal(work, expected)
    other, _ = build_tiny(seed=1)
    parent = torch.nn.Module()
    parent.policy = master
    parent.load_state_dict({f"policy.{k}": v for k, v in other.state_dict().items()})  # as Lightning loads a ckpt
    for work, expected in zip(copy.module.parameters(), cast(other)):
        assert torch.equal(work, expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_an_update_through_the_copy_matches_float32_within_bf16_rounding(seed):
    """The policy-gradient loss's gradient of a sampled batch, through the copy, against float32.

    Tolerance: bf16 rounds every operand and result of the forward and backward to 8 significant bits
    (relative error <= u = 2^-9); the tiny model's gradient passes a few dozen such roundings, whose errors
    add up roughly in quadrature, so a relative error of a few u is expected (0.006-0.007 measured, 3.2-3.5 u;
    Lightning's bf16-mixed autocast, the accepted bf16 training, gives 0.004-0.005). Asserted: at most 10 u
    (0.0195), at most twice autocast's own error, a loss equal to float32's within 10 u, and the same
    direction (cosine >= 0.9995)."""
    from clipo.builders import build_module, plain, rollout_sampling
    from clipo.compose import compose
    from clipo.data import build_dataset
    from clipo.rl.collector import Trajectory
    from tests.conftest import TINY_OVERRIDES

    cfg = compose(TINY_OVERRIDES + ["loss=none", f"seed={seed}", "rollout.engine=hf"], Path(tempfile.mkdtemp()))
    module = build_module(cfg)
    records = list(build_dataset(**plain(cfg.data.train)))[:2]
    torch.manual_seed(seed)
    batch = module.collector.engine.generate(records, 4, rollout_sampling(cfg)[0], None)
    n = len(batch.responses)
    correct = torch.arange(n) % 2 == 0
    advantages = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    trajectory = Trajectory(batch, correct.float(), correct, correct.float(), advantages)  # on-policy
    updater, index = module.updater, torch.arange(n)
    norm = updater.step_normalizer(batch.response_mask, batch.groups, correct)
    micro_batches = updater.batching.micro_batches(batch, index, updater.batching.sizes(n, 1)[1])

    def gradient(model: torch.nn.Module, autocast: bool = False) -> tuple[torch.Tensor, float]:
        """The update's gradient, summed over its micro-batches (before clipping), and its loss."""
        module.policy.zero_grad(set_to_none=True)
        updater.forward_model = model
        old_seen, loss = torch.zeros(batch.response_mask.shape), 0.0
        for micro_batch in micro_batches:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast, cache_enabled=False):
                part, _ = updater._micro_batch_loss(trajectory, micro_batch, norm, n, old_seen)
            part.backward()
            loss += float(part.detach())
        return torch.cat([p.grad.flatten() for p in module.policy.parameters()]), loss

    reference, loss = gradient(module.policy)
    autocast, _ = gradient(module.policy, autocast=True)
    through_copy, copy_loss = gradient(WorkingCopy(module.policy).module)

    def relative(g: torch.Tensor) -> float:
        return float((g - reference).norm() / reference.norm())

    assert relative(through_copy) <= 10 * BF16_U
    assert relative(through_copy) <= 2 * relative(autocast)
    assert abs(copy_loss - loss) <= 10 * BF16_U * max(abs(loss), 1e-3)
    assert torch.nn.functional.cosine_similarity(through_copy, reference, dim=0) >= 0.9995


def test_a_run_on_the_working_copy_trains_the_float32_policy(parity_verifier, tmp_path):
    """trainer.precision=bf16-copy: the float32 policy learns (finite loss, weights moved), the hf engine
    samples from the copy, and the copy ends equal to the master cast to bf16 (cast after every update)."""
    from clipo.train import train
    from tests.conftest import tiny_parity_config

    cfg = tiny_parity_config(tmp_path, "trainer.precision=bf16-copy", "data.val=null", "rollout.engine=hf",
                             "trainer.max_steps=2")
    initial = [p.detach().clone() for p in build_tiny(seed=cfg.seed)[0].parameters()]
    metrics, objects = train(cfg)
    module = objects["module"]
    assert torch.isfinite(torch.tensor(metrics["actor/loss"]))
    assert objects["trainer"].precision == "32-true"  # no autocast: the copy is cast once per update
    assert {p.dtype for p in module.policy.parameters()} == {torch.float32}
    assert any(not torch.equal(p, q) for p, q in zip(module.policy.parameters(), initial))
    copy = module.updater.forward_model
    assert module.collector.engine.policy is copy and module.collector.logprobs.policy is copy
    for work, expected in zip(copy.parameters(), cast(module.policy)):
        assert torch.equal(work, expected)
