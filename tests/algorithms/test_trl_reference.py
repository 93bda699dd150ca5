"""Every `algorithm=` option and setting with a TRL 1.16 counterpart equals `GRPOTrainer._compute_loss`.

Each case runs TRL's own method (tests/references/trl.py) and clipo's loss on the same random inputs
(uneven masks, groups of equal rewards, three seeds) and compares the loss and its gradient with
respect to the current log-probs. Tolerance: both are float32 sums of a few hundred O(1) terms taken
in different orders (TRL multiplies by the mask and divides at the end, clipo selects with `where`
and divides by step counts), which differ by a few float32 rounding steps (~1e-7 relative each):
atol = rtol = 1e-5 leaves a factor of ~10 over what was measured (`MAX_DIFFERENCE`, README table).
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from clipo.algorithms import LossInputs, StepNormalizer
from clipo.algorithms.masks import off_policy_mask
from clipo.algorithms.rollout_correction import importance_weights
from clipo.registry import ALGORITHMS
from tests.references.inputs import T, leaf, policy_batch
from tests.references.trl import trl_loss, trl_sampler_ratio

TOL = {"atol": 1e-5, "rtol": 1e-5}
SEEDS = [0, 1, 2]

# name: (TRL loss_type and settings, clipo's algorithm config, drift of pi / pi_old)
CASES = {
    "grpo": ({"loss_type": "grpo", "epsilon_high": 0.28},
             {"name": "grpo", "clip_high": 0.28, "clip_c": None, "aggregation": "seq-mean-token-mean"}, 0.3),
    "bnpo": ({"loss_type": "bnpo"}, {"name": "grpo", "clip_c": None}, 0.3),
    "dr_grpo": ({"loss_type": "dr_grpo", "max_completion_length": T},
                {"name": "grpo", "clip_c": None, "aggregation": "seq-mean-token-sum-norm"}, 0.3),
    "dapo": ({"loss_type": "dapo", "epsilon_high": 0.28, "delta": 10.0}, {"name": "dapo"}, 0.3),
    "delta": ({"loss_type": "dapo", "delta": 1.5}, {"name": "grpo", "clip_c": 1.5}, 0.6),
    "gspo": ({"loss_type": "grpo", "importance_sampling_level": "sequence", "epsilon_low": 3e-4,
              "epsilon_high": 4e-4}, {"name": "gspo"}, 1e-3),
    "luspo": ({"loss_type": "luspo", "importance_sampling_level": "sequence", "epsilon_low": 3e-4,
               "epsilon_high": 4e-4}, {"name": "luspo"}, 1e-3),
    "cispo": ({"loss_type": "cispo", "epsilon_high": 1.3}, {"name": "cispo", "clip_high": 0.3}, 0.3),
    "sapo": ({"loss_type": "sapo"}, {"name": "sapo"}, 0.3),
    "vespo": ({"loss_type": "vespo"}, {"name": "vespo"}, 0.1),
    "kl": ({"loss_type": "dapo", "beta": 0.04, "use_bias_correction_kl": False},
           {"name": "grpo", "clip_c": None, "kl_coef": 0.04}, 0.3),
    "kl_bias_correction": ({"loss_type": "dapo", "beta": 0.04, "use_bias_correction_kl": True},
                           {"name": "grpo", "clip_c": None, "kl_coef": 0.04, "kl_bias_correction": True}, 0.3),
    "kl_bias_correction_sequence": (
        {"loss_type": "grpo", "importance_sampling_level": "sequence", "epsilon_low": 3e-4, "epsilon_high": 4e-4,
         "beta": 0.04, "use_bias_correction_kl": True},
        {"name": "gspo", "kl_coef": 0.04, "kl_bias_correction": True}, 1e-3),
    "off_policy_mask": ({"loss_type": "dapo", "off_policy_mask_threshold": 0.05},
                        {"name": "grpo", "clip_c": None, "off_policy_mask_threshold": 0.05}, 0.3),
    "top_entropy_quantile": ({"loss_type": "dapo", "top_entropy_quantile": 0.3},
                             {"name": "grpo", "clip_c": None, "top_entropy_quantile": 0.3}, 0.3),
}


def run_both(case: str, seed: int, sampler: bool = False, token_weights=None, trl_ratio=None):
    trl_settings, clipo_cfg, drift = CASES[case]
    b = policy_batch(seed, drift)
    mask = b.mask
    inputs = {"completion_mask": mask.long(), "advantages": b.advantages, "old_per_token_logps": b.old,
              "ref_per_token_logps": b.ref}
    if sampler:
        inputs["sampling_per_token_logps"] = b.sampling
    if trl_ratio is not None:
        inputs["importance_sampling_ratio"] = trl_ratio
        trl_settings = {**trl_settings, "use_vllm": True, "vllm_importance_sampling_correction": True}
    theirs_logp = leaf(b.logprobs)
    theirs = trl_loss(theirs_logp, b.entropy, inputs, **trl_settings)
    (theirs_grad,) = torch.autograd.grad(theirs, theirs_logp)
    ours_logp = leaf(b.logprobs)
    algorithm = ALGORITHMS.build(clipo_cfg)
    norm = StepNormalizer.from_mask(mask, max_len=T)
    ref = b.ref if algorithm.uses_reference else None
    ours, _ = algorithm.loss(LossInputs(ours_logp, b.old, b.advantages, mask, ref, token_weights,
                                        b.sampling if sampler else None, b.entropy), norm)
    (ours_grad,) = torch.autograd.grad(ours, ours_logp)
    return (theirs.detach(), theirs_grad), (ours.detach(), ours_grad)


def assert_equal_results(theirs, ours) -> None:
    assert_close(ours[0], theirs[0], **TOL)
    assert_close(ours[1], theirs[1], **TOL)
    assert ours[1].abs().sum() > 0  # a real gradient


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_equals_trl_compute_loss(case, seed):
    theirs, ours = run_both(case, seed)
    assert_equal_results(theirs, ours)


@pytest.mark.parametrize("seed", SEEDS)
def test_off_policy_mask_reads_the_samplers_logprobs(seed):
    theirs, ours = run_both("off_policy_mask", seed, sampler=True)
    assert_equal_results(theirs, ours)
    b = policy_batch(seed)
    assert off_policy_mask(b.advantages, b.logprobs, b.sampling, b.mask, 0.05).min() == 0  # the mask drops rollouts


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
def test_sampler_correction_equals_trl(mode, seed):
    """TRL's vLLM importance weights (its own inline code) multiply the loss as clipo's token weights do;
    the weights themselves are compared in tests/algorithms/test_rollout_correction.py."""
    b = policy_batch(seed)
    level, kind = mode.split("_")
    ratio = trl_sampler_ratio(b.old, b.sampling, b.mask.long(), mode, 0.5, 3.0)
    weights, _ = importance_weights(b.old, b.sampling, b.mask, 3.0, level, kind, min_ratio=0.5)
    theirs, ours = run_both("dapo", seed, token_weights=weights, trl_ratio=ratio)
    assert_equal_results(theirs, ours)
