"""Which tokens' policy-gradient terms count: the settings every `algorithm=` option shares.

- `off_policy_mask` (DeepSeek-V3.2, arXiv 2512.02556, Eq. 9; TRL's `off_policy_mask_threshold`):
  drop a rollout with a negative advantage whose policy has drifted too far from the one that
  sampled it, measured as the mean over its tokens of `log pi_sampler - log pi_theta`.
- `high_entropy_mask` ("Beyond the 80/20 Rule", arXiv 2506.01939; TRL's `top_entropy_quantile`):
  keep only the tokens whose entropy is in the top quantile of the micro-batch's response tokens.

Both are 0/1 factors of the per-token loss (the normaliser still counts the dropped tokens, as TRL's).
Shapes: `N` rollouts, `T` response tokens.
"""

from __future__ import annotations

import torch


def off_policy_mask(
    advantages: torch.Tensor,
    logprobs: torch.Tensor,
    sampling_logprobs: torch.Tensor,
    mask: torch.Tensor,
    threshold: float,
) -> torch.Tensor:
    """[N, 1] float: 1 keeps the rollout (A >= 0, or mean drift <= `threshold`), 0 drops it.

    Args:
        advantages: [N] advantages.
        logprobs: [N, T] current log-probs (used detached).
        sampling_logprobs: [N, T] the sampler's log-probs (pi_old when the trainer sampled itself).
        mask: [N, T] bool, response tokens.
        threshold: the drift bound delta (TRL: e.g. 0.5).
    """
    drift = torch.nan_to_num(sampling_logprobs.float() - logprobs.detach().float(), nan=0.0)  # unscored tokens: 0
    mean_drift = torch.where(mask, drift, 0.0).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
    keep = (advantages.unsqueeze(-1) >= 0) | (mean_drift <= threshold)
    return keep.float()


def high_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, top_quantile: float) -> torch.Tensor:
    """[N, T] bool: response tokens whose entropy is at least the `1 - top_quantile` quantile of them all.

    The quantile is torch's (linear interpolation) over this micro-batch's response tokens, as TRL
    takes it per forward pass (TRL also pools the processes' micro-batches; here each process keeps
    its own). `top_quantile` 1 keeps every token, 0 only the highest.
    """
    values = entropy[mask].float()
    if values.numel() == 0:
        return torch.zeros_like(mask)
    threshold = torch.quantile(values, 1.0 - top_quantile)
    return (torch.where(mask, entropy.float(), 0.0) >= threshold) & mask
