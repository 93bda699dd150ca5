"""TRL 1.16's `GRPOTrainer` loss and advantage code, run on given tensors.

`GRPOTrainer._compute_loss` is TRL's own method, called on a trainer object that holds only the
attributes it reads: the model forward (`_get_per_token_logps_and_entropies`) is replaced by given
log-probs and entropies, and the accelerator by one process. The sampler correction and the reward
normalisation are inline blocks of `_generate_and_score_completions`, which also generates and
scores; `trl_block` runs such a block's own source lines (cut out of the installed file at two
marker lines that fail loudly when TRL changes) on given tensors.
"""

from __future__ import annotations

import inspect
import math
import textwrap
import types
from collections import defaultdict

import torch
from trl import GRPOTrainer
from trl.trainer.utils import nanstd


class OneProcess:
    """The accelerator of a single process."""

    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x

    def pad_across_processes(self, x, dim=0, pad_index=0):
        return x


def trl_loss(logprobs: torch.Tensor, entropy: torch.Tensor, inputs: dict, loss_type: str, **settings) -> torch.Tensor:
    """TRL's `_compute_loss` with `per_token_logps = logprobs` (keep its graph for gradients).

    `inputs` holds completion_mask, advantages and old/ref/sampling log-probs as TRL's batch does;
    `settings` override the trainer's attributes and `args` (epsilon_low/high, beta, delta, ...).
    """
    trainer = object.__new__(GRPOTrainer)
    args = types.SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1,
                                 sapo_temperature_pos=1.0, sapo_temperature_neg=1.05, vespo_k_pos=2.0,
                                 vespo_lambda_pos=3.0, vespo_k_neg=3.0, vespo_lambda_neg=2.0)
    for key in list(settings):
        if hasattr(args, key):
            setattr(args, key, settings.pop(key))
    trainer.__dict__.update(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logprobs, entropy, None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=0.0,
        loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.2, use_vllm=False,
        vllm_importance_sampling_correction=False,
        model=types.SimpleNamespace(training=True), current_gradient_accumulation_steps=1, max_completion_length=None,
        accelerator=OneProcess(), _entropy_bonus_enabled=False, aux_loss_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, args=args,
    )
    trainer.__dict__.update(settings)
    n, t = inputs["completion_mask"].shape
    batch = {"prompt_ids": torch.zeros(n, 1, dtype=torch.long), "prompt_mask": torch.ones(n, 1, dtype=torch.long),
             "completion_ids": torch.zeros(n, t, dtype=torch.long), **inputs}
    batch.setdefault("num_items_in_batch", inputs["completion_mask"].sum())
    return GRPOTrainer._compute_loss(trainer, None, batch)


def trl_block(method, first: str, after_last: str) -> str:
    """The dedented source of `method` from the line containing `first` up to (not including) the line
    containing `after_last`."""
    lines = inspect.getsource(method).splitlines()
    start = next((i for i, line in enumerate(lines) if first in line), None)
    if start is None:
        raise LookupError(f"{first!r} is no longer in TRL's {method.__qualname__}: update tests/references/trl.py")
    end = next((i for i in range(start + 1, len(lines)) if after_last in lines[i]), None)
    if end is None:
        raise LookupError(f"{after_last!r} is no longer in TRL's {method.__qualname__}: update tests/references/trl.py")
    return textwrap.dedent("\n".join(lines[start:end]))


GENERATE = GRPOTrainer._generate_and_score_completions


def trl_sampler_ratio(old: torch.Tensor, sampling: torch.Tensor, mask: torch.Tensor, mode: str,
                      clip_min: float | None, clip_max: float | None) -> torch.Tensor:
    """TRL's vLLM importance-sampling ratio ([N, T] token modes, [N, 1] sequence modes)."""
    source = trl_block(GENERATE, "if self.use_vllm and self.vllm_importance_sampling_correction:",
                       "# Compute the per-token log probabilities for the reference model")
    owner = types.SimpleNamespace(use_vllm=True, vllm_importance_sampling_correction=True,
                                  vllm_importance_sampling_mode=mode, vllm_importance_sampling_clip_min=clip_min,
                                  vllm_importance_sampling_clip_max=clip_max)
    scope = {"self": owner, "torch": torch, "math": math, "completion_mask": mask, "tool_mask": None,
             "old_per_token_logps": old, "sampling_per_token_logps": sampling}
    exec(source, scope)
    return scope["vllm_importance_sampling_ratio"]


def trl_advantages(rewards_per_func: torch.Tensor, weights: torch.Tensor, group_size: int, scale_rewards: str,
                   aggregation: str = "sum_then_normalize") -> torch.Tensor:
    """TRL's advantages from rewards [N, F] of contiguous groups of `group_size`."""
    source = trl_block(GENERATE, 'if self.multi_objective_aggregation == "sum_then_normalize":',
                       "# Slice to keep only the local part of the data")
    owner = types.SimpleNamespace(multi_objective_aggregation=aggregation, scale_rewards=scale_rewards,
                                  reward_weights=weights, reward_funcs=[None] * rewards_per_func.shape[-1])
    scope = {"self": owner, "torch": torch, "nanstd": nanstd, "rewards_per_func": rewards_per_func,
             "unscorable_mask": torch.isnan(rewards_per_func).all(dim=1), "num_generations": group_size,
             "device": rewards_per_func.device}
    exec(source, scope)
    return scope["advantages"]
