"""`algorithm=dppo_kl`: DPPO with the binary-KL trust region."""

from __future__ import annotations

import torch

from clipo.algorithms.dppo import DPPOLossBase
from clipo.registry import ALGORITHMS


@ALGORITHMS.register("dppo_kl")
class DPPOKLLoss(DPPOLossBase):
    """`algorithm=dppo_kl`: DPPO-Binary-KL (arXiv 2602.04879), verl's `dppo_kl`: with p the sampled token's
    probability, the KL between the Bernoulli(p_old) and Bernoulli(p) distributions
    `p_old log(p_old / p) + (1 - p_old) log((1 - p_old + 1e-8) / (1 - p + 1e-8))` bounds the update only in
    the advantage's direction: a token keeps its gradient while that KL <= clip_high or p <= p_old (A > 0),
    KL <= clip_low or p >= p_old (A <= 0); see `dppo_token_losses`."""

    def valid_tokens(self, logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                     advantages: torch.Tensor) -> torch.Tensor:
        p, p_old = logprobs.exp(), old_logprobs.exp()
        kl = p_old * (old_logprobs - logprobs) + (1 - p_old) * torch.log((1.0 - p_old + 1e-8) / (1.0 - p + 1e-8))
        return torch.where(advantages > 0, (kl <= self.clip_high) | (p <= p_old), (kl <= self.clip_low) | (p >= p_old))
