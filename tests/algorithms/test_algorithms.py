"""Policy losses, aggregation and KL estimators: hand values, published formulas, gradient accumulation."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from clipo.algorithms import (
    AGGREGATIONS,
    DAPOLoss,
    GMPOLoss,
    GRPOLoss,
    GSPOLoss,
    LossInputs,
    StepNormalizer,
    aggregate,
    token_kl,
)
from clipo.registry import ALGORITHMS
from clipo.rollout.packing import pack_by_tokens

ALL = ["grpo", "dapo", "gspo", "gmpo"]
# token losses that are sums of per-token terms (clip_cov and kl_cov pick tokens by micro-batch statistics,
# as verl's; conspo contrasts whole groups: tests/algorithms/test_conspo.py)
TOKEN_SUMS = ALL + ["luspo", "cispo", "sapo", "vespo", "gpg", "dro", "dppo_tv", "dppo_kl"]
# at ratio 1 their loss value is -A per token too (the others put log pi, or a gate's value, in it)
RATIO_VALUES = ALL + ["luspo", "kl_cov"]


def full(n: int, t: int) -> torch.Tensor:
    return torch.ones(n, t, dtype=torch.bool)


# ---- aggregation ------------------------------------------------------------------------
LOSS = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, float("nan")]])  # masked entries must not leak
MASK = torch.tensor([[True, True, False], [True, False, False]])


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("token-mean", 2.0),  # (1 + 2 + 3) / 3 tokens
        ("seq-mean-token-mean", 2.25),  # (mean(1, 2) + mean(3)) / 2 = (1.5 + 3) / 2
        ("seq-mean-token-sum", 3.0),  # ((1 + 2) + 3) / 2
        ("seq-mean-token-sum-norm", 1.0),  # (1 + 2 + 3) / (2 seqs * max_len 3)
    ],
)
def test_aggregate_hand_example(mode, expected):
    norm = StepNormalizer.from_mask(MASK)
    assert norm == StepNormalizer(tokens=3.0, sequences=2.0, max_len=3)
    assert_close(aggregate(LOSS, MASK, mode, norm), torch.tensor(expected))


def test_aggregate_uses_step_counts_not_micro_batch_counts():
    # the same micro-batch inside a step of 12 tokens, 4 sequences, max_len 10
    norm = StepNormalizer(tokens=12.0, sequences=4.0, max_len=10)
    assert_close(aggregate(LOSS, MASK, "token-mean", norm), torch.tensor(6.0 / 12))
    assert_close(aggregate(LOSS, MASK, "seq-mean-token-mean", norm), torch.tensor(4.5 / 4))
    assert_close(aggregate(LOSS, MASK, "seq-mean-token-sum", norm), torch.tensor(6.0 / 4))
    assert_close(aggregate(LOSS, MASK, "seq-mean-token-sum-norm", norm), torch.tensor(6.0 / 40))


def test_normalizer_from_micro_batches_and_errors():
    # two micro-batches of different widths; the empty row is not a sequence
    masks = [MASK, torch.tensor([[True, True, True, True], [False, False, False, False]])]
    assert StepNormalizer.from_mask(masks) == StepNormalizer(tokens=7.0, sequences=3.0, max_len=4)
    assert StepNormalizer.from_mask(MASK, max_len=64).max_len == 64
    with pytest.raises(ValueError, match="unknown aggregation 'mean'.*token-mean"):
        aggregate(LOSS, MASK, "mean", StepNormalizer.from_mask(MASK))
    with pytest.raises(ValueError, match="positive"):
        StepNormalizer(tokens=0.0, sequences=1.0, max_len=1)


# ---- KL estimators ----------------------------------------------------------------------
def test_kl_hand_values():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # log ratio = ln 2 = 0.693147
    assert_close(token_kl(logp, ref, "k1"), torch.tensor([0.693147]))
    assert_close(token_kl(logp, ref, "k2"), torch.tensor([0.5 * 0.693147**2]))  # 0.240227
    assert_close(token_kl(logp, ref, "k3"), torch.tensor([0.5 + 0.693147 - 1]))  # exp(-ln 2) + ln 2 - 1
    assert_close(token_kl(logp, logp, "k3"), torch.tensor([0.0]))


def test_k3_nonnegative_and_clamped():
    gen = torch.Generator().manual_seed(0)
    logp, ref = torch.randn(100, 10, generator=gen) * 3, torch.randn(100, 10, generator=gen) * 3
    assert (token_kl(logp, ref, "k3") >= 0).all()
    # ref - logp = 15: exp(15) - 15 - 1 = 3.3e6, clamped to 10; = -30: exp(-20) + 20 - 1 = 19, clamped to 10
    assert_close(token_kl(torch.tensor([0.0, 0.0]), torch.tensor([15.0, -30.0]), "k3"), torch.tensor([10.0, 10.0]))
    with pytest.raises(ValueError, match="k1, k2, k3"):
        token_kl(logp, ref, "k4")


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_k1_k3_unbiased(estimator):
    # E_{x ~ q}[k(x)] = KL(q || p) exactly: weight every outcome of a categorical by q(x)
    gen = torch.Generator().manual_seed(1)
    q = torch.softmax(torch.randn(50, generator=gen), 0)
    p = torch.softmax(torch.randn(50, generator=gen), 0)
    exact = (q * (q.log() - p.log())).sum()
    assert_close((q * token_kl(q.log(), p.log(), estimator)).sum(), exact, atol=1e-6, rtol=1e-5)
    # and from samples, within 5 standard errors
    x = torch.multinomial(q, 200_000, replacement=True, generator=gen)
    k = token_kl(q.log()[x], p.log()[x], estimator)
    assert abs(float(k.mean() - exact)) < 5 * float(k.std()) / math.sqrt(len(x))


def test_k2_is_biased():
    # k2 is low-variance but biased: its expectation differs from the KL here
    q, p = torch.tensor([0.9, 0.1]), torch.tensor([0.1, 0.9])
    exact = (q * (q.log() - p.log())).sum()  # 1.7578
    assert abs(float((q * token_kl(q.log(), p.log(), "k2")).sum() - exact)) > 0.1


# ---- clipped objectives on hand examples ------------------------------------------------
def ratios_to_logprobs(ratios: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    old = torch.full_like(ratios, -1.0)
    return (old + ratios.log()).requires_grad_(), old


def test_grpo_clip_and_dual_clip_hand_example():
    ratios = torch.tensor([[1.5, 1.1, 0.5], [0.5, 0.9, 4.0]])
    logp, old = ratios_to_logprobs(ratios)
    adv = torch.tensor([1.0, -1.0])
    norm = StepNormalizer.from_mask(full(2, 3))
    loss, m = GRPOLoss(clip_low=0.2, clip_high=0.2, clip_c=3.0)(logp, old, adv, full(2, 3), norm)
    # A=+1: max(-1.5, -1.2) = -1.2 (clipped high), -1.1, max(-0.5, -0.8) = -0.5 (not clipped: pessimistic side)
    # A=-1: max(0.5, 0.8) = 0.8 (clipped low), 0.9, max(4, 1.2) = 4 -> dual clip min(4, 3) = 3
    assert_close(loss, torch.tensor((-1.2 - 1.1 - 0.5 + 0.8 + 0.9 + 3.0) / 6))
    assert_close(m["actor/clip_frac_high"], torch.tensor(1 / 6))
    assert_close(m["actor/clip_frac_low"], torch.tensor(1 / 6))
    assert_close(m["actor/clip_frac_dual"], torch.tensor(1 / 6))
    assert_close(m["actor/ratio_mean"], ratios.mean())
    loss.backward()
    # d(-A r)/d logp = -A r / 6 where unclipped; clipped tokens get no gradient
    expected = torch.tensor([[0.0, -1.1, -0.5], [0.0, 0.9, 0.0]]) / 6
    assert_close(logp.grad, expected)


def test_dual_clip_disabled_and_negative_advantage():
    logp, old = ratios_to_logprobs(torch.tensor([[5.0]]))
    norm = StepNormalizer.from_mask(full(1, 1))
    adv = torch.tensor([-2.0])
    loss, _ = GRPOLoss(clip_c=3.0)(logp, old, adv, full(1, 1), norm)
    assert_close(loss, torch.tensor(6.0))  # -A * clip_c = 2 * 3
    loss_off, m = GRPOLoss(clip_c=None)(logp, old, adv, full(1, 1), norm)
    assert_close(loss_off, torch.tensor(10.0))  # max(-A r, -A clip(r)) = max(10, 2.4)
    assert "actor/clip_frac_dual" not in m
    with pytest.raises(ValueError, match="clip_c"):
        GRPOLoss(clip_c=1.1)


def test_dapo_clip_higher():
    # A=+1, r=1.25: GRPO clips at 1.2, DAPO's clip_high 0.28 lets it through
    logp, old = ratios_to_logprobs(torch.tensor([[1.25]]))
    norm, adv, mask = StepNormalizer.from_mask(full(1, 1)), torch.tensor([1.0]), full(1, 1)
    assert_close(GRPOLoss()(logp, old, adv, mask, norm)[0], torch.tensor(-1.2))
    loss, m = DAPOLoss()(logp, old, adv, mask, norm)
    assert_close(loss, torch.tensor(-1.25))
    assert m["actor/clip_frac_high"] == 0
    dapo = DAPOLoss()
    assert (dapo.clip_low, dapo.clip_high, dapo.clip_c, dapo.aggregation) == (0.2, 0.28, 10.0, "token-mean")
    with pytest.raises(TypeError):  # the sampling tricks are not loss hyper-parameters (configs/sampling/)
        DAPOLoss(dynamic_sampling=True)


def test_gspo_hand_example():
    # token log-ratios [0.1, -0.3] -> s = exp(-0.1) = 0.904837; clip range 0.05 -> [0.95, 1.05]
    old = torch.tensor([[-1.0, -2.0]])
    logp = (old + torch.tensor([[0.1, -0.3]])).requires_grad_()
    norm, mask = StepNormalizer.from_mask(full(1, 2)), full(1, 2)
    gspo = GSPOLoss(clip_low=0.05, clip_high=0.05)
    loss, m = gspo(logp, old, torch.tensor([1.0]), mask, norm)
    assert_close(loss, torch.tensor(-0.904837))  # A > 0, ratio below range: pessimistic side, unclipped
    assert m["actor/clip_frac_low"] == 0 and m["actor/clip_frac_high"] == 0
    loss.backward()
    # d/dlogp_t of mean_t(-s) = -s / 2 per token (GSPO: s * mean_t grad log pi)
    assert_close(logp.grad, torch.full((1, 2), -0.904837 / 2))
    loss, m = gspo(logp, old, torch.tensor([-1.0]), mask, norm)
    assert_close(loss, torch.tensor(0.95))  # A < 0: max(0.9048, 0.95), clipped
    assert m["actor/clip_frac_low"] == 1


def test_gspo_gradient_is_the_sequence_level_gradient():
    gen = torch.Generator().manual_seed(3)
    old = torch.randn(4, 5, generator=gen) - 2
    logp = (old + 0.01 * torch.randn(4, 5, generator=gen)).requires_grad_()
    mask = torch.arange(5) < torch.tensor([[5], [3], [1], [4]])
    adv = torch.tensor([1.0, -0.5, 2.0, -1.0])
    norm = StepNormalizer.from_mask(mask)
    GSPOLoss(clip_low=1.0, clip_high=1.0)(logp, old, adv, mask, norm)[0].backward()  # wide: nothing clipped
    # the paper's sequence objective: -(1/S) sum_i A_i exp(mean_t log ratio)
    logp2 = logp.detach().clone().requires_grad_()
    seq_log_ratio = torch.where(mask, logp2 - old, 0).sum(-1) / mask.sum(-1)
    (-(adv * seq_log_ratio.exp()).sum() / 4).backward()
    assert_close(logp.grad, logp2.grad)


def test_gspo_one_token_responses_equal_token_level_clipping():
    gen = torch.Generator().manual_seed(4)
    old = torch.randn(16, 1, generator=gen) - 1
    logp = (old + 0.3 * torch.randn(16, 1, generator=gen)).requires_grad_()
    adv, mask = torch.randn(16, generator=gen), full(16, 1)
    norm = StepNormalizer.from_mask(mask)
    loss_s, m_s = GSPOLoss(clip_low=0.2, clip_high=0.28, aggregation="token-mean")(logp, old, adv, mask, norm)
    (grad_s,) = torch.autograd.grad(loss_s, logp)
    loss_t, m_t = GRPOLoss(clip_low=0.2, clip_high=0.28, clip_c=None)(logp, old, adv, mask, norm)
    (grad_t,) = torch.autograd.grad(loss_t, logp)
    assert m_t["actor/clip_frac_low"] + m_t["actor/clip_frac_high"] > 0  # the example does clip
    assert_close(loss_s, loss_t)
    assert_close(grad_s, grad_t)
    assert_close(m_s["actor/clip_frac_high"], m_t["actor/clip_frac_high"])


def test_gmpo_hand_example():
    old = torch.zeros(3, 3)
    lr = torch.tensor([[0.6, -0.2, 0.1], [0.6, -0.2, 0.1], [-0.6, 0.2, 0.1]])
    logp = (old + lr).requires_grad_()
    adv, mask = torch.tensor([1.0, -1.0, -1.0]), full(3, 3)
    norm = StepNormalizer.from_mask(mask)
    loss, m = GMPOLoss(clip_low=0.4, clip_high=0.4)(logp, old, adv, mask, norm)
    # row 0, A=+1: min(lr, clip(lr)) = [0.4, -0.2, 0.1], mean 0.1 -> -exp(0.1) = -1.105171
    # row 1, A=-1: max(lr, clip(lr)) = [0.6, -0.2, 0.1], mean 0.16667 -> +exp(0.16667) = 1.181360
    # row 2, A=-1: max(lr, clip(lr)) = [-0.4, 0.2, 0.1], mean -0.03333 -> +exp(-0.03333) = 0.967216
    assert_close(loss, torch.tensor((-1.105171 + 1.181360 + 0.967216) / 3))
    assert_close(m["actor/clip_frac_high"], torch.tensor(1 / 9))  # row 0, token 0
    assert_close(m["actor/clip_frac_low"], torch.tensor(1 / 9))  # row 2, token 0
    loss.backward()
    # d/dlr_t of -A exp(mean l) = -A exp(mean l) / 3 on unclipped tokens, then / 3 sequences
    expected = torch.tensor(
        [[0.0, -1.105171, -1.105171], [1.181360, 1.181360, 1.181360], [0.0, 0.967216, 0.967216]]
    ) / 9
    assert_close(logp.grad, expected)


# (against TRL's and verl's own code: test_trl_reference.py, test_verl_reference.py)


# ---- ratio 1 is the plain policy gradient ------------------------------------------------
@pytest.mark.parametrize("name", TOKEN_SUMS + ["kl_cov"])
@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_ratio_one_is_plain_policy_gradient(name, mode):
    gen = torch.Generator().manual_seed(5)
    logp = (torch.randn(5, 6, generator=gen) - 2).requires_grad_()
    mask = torch.arange(6) < torch.tensor([[6], [2], [4], [1], [5]])
    adv = torch.randn(5, generator=gen)
    norm = StepNormalizer(tokens=30.0, sequences=7.0, max_len=9)  # as if part of a larger step
    loss, m = ALGORITHMS.build({"name": name, "aggregation": mode})(logp, logp.detach(), adv, mask, norm)
    (grad,) = torch.autograd.grad(loss, logp)
    plain = -adv[:, None] * logp  # REINFORCE surrogate: value -A * logp, gradient -A * grad logp
    if name in RATIO_VALUES:
        assert_close(loss, aggregate(-adv[:, None].expand_as(logp), mask, mode, norm))
    (expected,) = torch.autograd.grad(aggregate(plain, mask, mode, norm), logp)
    assert_close(grad, expected)
    assert m["actor/clip_frac_low"] == 0 and (m["actor/clip_frac_high"] == 0 or name == "kl_cov")
    assert_close(m["actor/ratio_mean"], torch.tensor(1.0))
    assert_close(m["actor/approx_kl"], torch.tensor(0.0))


# ---- gradient accumulation with the step normaliser -------------------------------------
def linear_policy_logprobs(weight, features, tokens):
    """A tiny "policy": logits = features @ weight, log-prob of the given tokens. [N, T]."""
    return torch.log_softmax(features @ weight, -1).gather(-1, tokens[..., None]).squeeze(-1)


def accumulation_setup(seed: int):
    gen = torch.Generator().manual_seed(seed)
    n, t, d, v = 8, 6, 5, 7
    features, tokens = torch.randn(n, t, d, generator=gen), torch.randint(v, (n, t), generator=gen)
    weight = torch.randn(d, v, generator=gen, requires_grad=True)
    lengths = torch.tensor([6, 1, 3, 5, 2, 6, 4, 1])  # unequal response lengths
    mask = torch.arange(t) < lengths[:, None]
    with torch.no_grad():
        base = linear_policy_logprobs(weight, features, tokens)
    old = base + 0.1 * torch.randn(n, t, generator=gen)
    ref = base + 0.2 * torch.randn(n, t, generator=gen)
    adv = torch.randn(n, generator=gen)
    return weight, features, tokens, mask, old, ref, adv


ACCUMULATION_KWARGS = {"gspo": {"clip_low": 0.05, "clip_high": 0.05}, "luspo": {"clip_low": 0.05, "clip_high": 0.05}}


@pytest.mark.parametrize("name", TOKEN_SUMS)
@pytest.mark.parametrize("mode", AGGREGATIONS)
@pytest.mark.parametrize("split", ["2 chunks", "4 chunks", "token budget"])
def test_gradient_accumulation_equals_full_batch(name, mode, split):
    weight, features, tokens, mask, old, ref, adv = accumulation_setup(seed=6)
    if split == "token budget":  # ppo.max_tokens_per_micro_batch: unequal micro-batches, out of order
        lengths = mask.sum(-1)  # 6,1,3,5,2,6,4,1; padded rows: rows x the longest
        micro_batches = pack_by_tokens(lengths, 12, lambda rows: len(rows) * int(lengths[rows].max()))
        assert [len(b) for b in micro_batches] == [2, 2, 4]  # 6,6 | 5,4 | 3,2,1,1
    else:
        micro_batches = torch.arange(len(adv)).chunk(int(split[0]))
    algo = ALGORITHMS.build({"name": name, "aggregation": mode, "kl_coef": 0.1, **ACCUMULATION_KWARGS.get(name, {})})
    norm = StepNormalizer.from_mask(mask)
    full_loss, _ = algo(linear_policy_logprobs(weight, features, tokens), old, adv, mask, norm, ref)
    (full_grad,) = torch.autograd.grad(full_loss, weight)
    assert full_grad.abs().sum() > 1e-3  # a real gradient
    micro_total = 0.0
    for idx in micro_batches:
        logp = linear_policy_logprobs(weight, features[idx], tokens[idx])
        loss, _ = algo(logp, old[idx], adv[idx], mask[idx], norm, ref[idx])
        loss.backward()  # accumulates into weight.grad
        micro_total = micro_total + loss.detach()
    assert_close(micro_total, full_loss.detach())
    assert_close(weight.grad, full_grad)


def test_per_micro_batch_normalisation_would_be_wrong():
    # the control: normalising each micro-batch by its own counts changes the gradient
    weight, features, tokens, mask, old, ref, adv = accumulation_setup(seed=6)
    algo = GRPOLoss()
    logp = linear_policy_logprobs(weight, features, tokens)
    full_loss, _ = algo(logp, old, adv, mask, StepNormalizer.from_mask(mask))
    (full_grad,) = torch.autograd.grad(full_loss, weight)
    for idx in torch.arange(8).chunk(2):
        logp = linear_policy_logprobs(weight, features[idx], tokens[idx])
        algo(logp, old[idx], adv[idx], mask[idx], StepNormalizer.from_mask(mask[idx]))[0].backward()
    assert not torch.allclose(weight.grad / 2, full_grad, atol=1e-4)


# ---- KL term, reference use, validation, contract ---------------------------------------
def test_kl_term_added_with_coefficient():
    gen = torch.Generator().manual_seed(7)
    logp, old, ref = (torch.randn(3, 4, generator=gen) for _ in range(3))
    adv, mask = torch.randn(3, generator=gen), full(3, 4)
    norm = StepNormalizer.from_mask(mask)
    base, _ = GRPOLoss()(logp, old, adv, mask, norm)
    loss, m = GRPOLoss(kl_coef=0.5, kl_estimator="k2")(logp, old, adv, mask, norm, ref)
    kl = 0.5 * (logp - ref) ** 2
    assert_close(loss, base + 0.5 * kl.mean())
    assert_close(m["actor/kl"], kl.mean())
    assert GRPOLoss(kl_coef=0.5).uses_reference and not GRPOLoss().uses_reference
    with pytest.raises(ValueError, match="needs ref_logprobs"):
        GRPOLoss(kl_coef=0.5)(logp, old, adv, mask, norm)


def test_constructor_and_shape_errors():
    with pytest.raises(ValueError, match="token-mean, seq-mean-token-mean"):
        GSPOLoss(aggregation="sum")
    with pytest.raises(ValueError, match="k1, k2, k3"):
        GMPOLoss(kl_estimator="kl")
    mask, norm = full(2, 3), StepNormalizer(6.0, 2.0, 3)
    with pytest.raises(ValueError, match=r"advantages must be \[N\]"):
        GRPOLoss()(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), mask, norm)
    with pytest.raises(ValueError, match="old_logprobs has shape"):
        GRPOLoss()(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2), mask, norm)


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_registry_contract(name):
    algo = ALGORITHMS.build({"name": name, "kl_coef": 0.01})
    gen = torch.Generator().manual_seed(8)
    logp = (torch.randn(4, 5, generator=gen) - 2).to(torch.bfloat16).requires_grad_()
    old = logp.detach().float() + 0.05 * torch.randn(4, 5, generator=gen)
    mask = torch.arange(5) < torch.tensor([[5], [1], [3], [0]])  # includes an empty response
    groups, correct = torch.tensor([0, 0, 1, 1]), torch.tensor([True, False, True, False])
    norm = StepNormalizer.from_mask(mask, groups=groups, correct=correct)
    inputs = LossInputs(logp, old, torch.randn(4, generator=gen), mask, old - 0.1, groups=groups, correct=correct)
    loss, metrics = algo.loss(inputs, norm)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert logp.grad is not None and torch.isfinite(logp.grad).all()
    keys = ["pg_loss", "clip_frac_low", "clip_frac_high", "approx_kl", "kl", "ratio_mean"]
    for key in (f"actor/{k}" for k in keys):
        assert metrics[key].dim() == 0 and not metrics[key].requires_grad and torch.isfinite(metrics[key])
    assert algo.uses_reference
