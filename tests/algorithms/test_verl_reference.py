"""Every `algorithm=` option with a verl counterpart equals verl 0.9.1's registered policy loss.

verl's own functions (`core_algos.get_policy_loss_fn(name)`, tests/references/verl.py) and clipo's
losses run on the same random inputs (uneven masks, groups of equal rewards, three seeds); the loss
and its gradient with respect to the current log-probs are compared. verl's `agg_loss` gets the
step's counts (`global_batch_info`), so it normalises as clipo's `StepNormalizer` does, and the
sequence-length constant of seq-mean-token-sum-norm is T. Tolerance as in test_trl_reference.py
(float32 sums in different orders; verl's seq-mean-token-mean divides by `count + 1e-8`, 1e-8 relative).
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from clipo.algorithms import AGGREGATIONS, LossInputs, StepNormalizer
from clipo.algorithms.rollout_correction import importance_weights
from clipo.registry import ALGORITHMS
from tests.references.inputs import T, leaf, policy_batch
from tests.references.verl import actor_config, core_algos

TOL = {"atol": 1e-5, "rtol": 1e-5}
SEEDS = [0, 1, 2]

# clipo name: (verl loss_mode, verl ActorConfig fields, clipo config, drift, probabilities, aggregation)
CASES = {
    "grpo": ("vanilla", {"clip_ratio_low": 0.2, "clip_ratio_high": 0.28, "clip_ratio_c": 3.0},
             {"clip_high": 0.28, "clip_c": 3.0}, 0.3, False),
    "gspo": ("gspo", {"clip_ratio_low": 3e-4, "clip_ratio_high": 4e-4}, {}, 1e-3, False),
    "gmpo": ("geo_mean", {"clip_ratio_low": 0.4, "clip_ratio_high": 0.4}, {}, 0.3, False),
    "sapo": ("sapo", {"tau_pos": 1.0, "tau_neg": 1.05}, {}, 0.3, False),
    "cispo": ("cispo", {"clip_ratio_low": 0.2, "clip_ratio_high": 0.28}, {"clip_low": 0.2, "clip_high": 0.28}, 0.3,
              False),
    "gpg": ("gpg", {}, {}, 0.3, False),
    "dro": ("dro", {"policy_loss": {"dro_beta": 0.1}}, {"beta": 0.1}, 0.3, False),
    "kl_cov": ("kl_cov", {"policy_loss": {"kl_cov_ratio": 0.1, "ppo_kl_coef": 0.5}},
               {"kl_cov_ratio": 0.1, "ppo_kl_coef": 0.5}, 0.3, False),
    "clip_cov": ("clip_cov", {"clip_ratio_low": 0.2, "clip_ratio_high": 0.2,
                              "policy_loss": {"clip_cov_ratio": 0.1, "clip_cov_lb": 0.05, "clip_cov_ub": 5.0}},
                 {"clip_cov_ratio": 0.1, "clip_cov_lb": 0.05, "clip_cov_ub": 5.0}, 0.3, False),
    "dppo_tv": ("dppo_tv", {"clip_ratio_low": 0.1, "clip_ratio_high": 0.1, "clip_ratio_c": 2.0},
                {"clip_low": 0.1, "clip_high": 0.1, "clip_c": 2.0}, 0.4, True),
    "dppo_kl": ("dppo_kl", {"clip_ratio_low": 0.05, "clip_ratio_high": 0.05, "clip_ratio_c": 2.0},
                {"clip_low": 0.05, "clip_high": 0.05, "clip_c": 2.0}, 0.4, True),
}
# verl imposes these (sapo: seq-mean-token-mean; geo_mean: a mean over sequences of its own)
FIXED_AGGREGATION = {"sapo": "seq-mean-token-mean", "gmpo": "seq-mean-token-mean"}


def run_both(name: str, aggregation: str, seed: int, weighted: bool = False):
    mode, verl_fields, clipo_fields, drift, probabilities = CASES[name]
    b = policy_batch(seed, drift, probabilities)
    mask = b.mask
    weights = importance_weights(b.old, b.sampling, mask, 2.0)[0] if weighted else None
    norm = StepNormalizer.from_mask(mask, max_len=T)
    config = actor_config(loss_agg_mode=aggregation, **verl_fields, global_batch_info={
        "dp_size": 1, "batch_num_tokens": norm.tokens, "global_batch_size": norm.sequences, "loss_scale_factor": T})
    verl_logp = leaf(b.logprobs)
    torch.manual_seed(seed)  # clip_cov draws its tokens from the global generator
    theirs, _ = core_algos().get_policy_loss_fn(mode)(b.old, verl_logp, b.advantages.unsqueeze(-1) * mask, mask.float(),
                                                      aggregation, config, weights)
    (theirs_grad,) = torch.autograd.grad(theirs, verl_logp)
    ours_logp = leaf(b.logprobs)
    algorithm = ALGORITHMS.build({"name": name, "aggregation": aggregation, **clipo_fields})
    torch.manual_seed(seed)
    ours, metrics = algorithm.loss(LossInputs(ours_logp, b.old, b.advantages, mask, token_weights=weights), norm)
    (ours_grad,) = torch.autograd.grad(ours, ours_logp)
    return (theirs.detach(), theirs_grad), (ours.detach(), ours_grad), metrics


PAIRS = [(name, mode) for name in sorted(CASES) for mode in AGGREGATIONS if FIXED_AGGREGATION.get(name, mode) == mode]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name,aggregation", PAIRS)
def test_equals_verl_policy_loss(name, aggregation, seed):
    theirs, ours, metrics = run_both(name, aggregation, seed)
    assert_close(ours[0], theirs[0], **TOL)
    assert_close(ours[1], theirs[1], **TOL)
    assert ours[1].abs().sum() > 0
    if name in ("clip_cov", "kl_cov", "dppo_tv", "dppo_kl"):  # their selection is active on these inputs
        assert metrics["actor/clip_frac_high"] > 0


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["grpo", "cispo", "dppo_kl", "sapo"])
def test_sampler_weights_equal_verls_rollout_is_weights(name, seed):
    theirs, ours, _ = run_both(name, FIXED_AGGREGATION.get(name, "token-mean"), seed, weighted=True)
    assert_close(ours[0], theirs[0], **TOL)
    assert_close(ours[1], theirs[1], **TOL)
