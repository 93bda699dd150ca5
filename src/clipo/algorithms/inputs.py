"""What a policy loss reads of one micro-batch: one record, so a new loss needs no new positional argument.

Shapes: `N` rollouts, `T` response tokens (right-padded; `mask[N, T]` true on response tokens).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class LossInputs(NamedTuple):
    """One micro-batch's tensors; a loss uses what it needs and ignores the rest.

    The first four are always there; the others are None where the run has none (e.g.
    `sampling_logprobs` when the trainer sampled itself, `ref_logprobs` without a KL term).
    """

    logprobs: torch.Tensor  # [N, T] current policy's log-probs of the sampled tokens (with gradient)
    old_logprobs: torch.Tensor  # [N, T] pi_old, the policy before this step's updates
    advantages: torch.Tensor  # [N] one per rollout
    mask: torch.Tensor  # [N, T] bool, true on response tokens
    ref_logprobs: torch.Tensor | None = None  # [N, T] the reference model's (KL term)
    token_weights: torch.Tensor | None = None  # [N, T] sampler importance weights (`rollout_correction`)
    sampling_logprobs: torch.Tensor | None = None  # [N, T] the sampling engine's own (vllm)
    entropy: torch.Tensor | None = None  # [N, T] the current policy's entropy at each position (no gradient)
    groups: torch.Tensor | None = None  # [N] integer group (prompt) ids
    correct: torch.Tensor | None = None  # [N] bool, the verifier's label
    shaping: torch.Tensor | None = None  # [N] what reward shaping (overlong, CLIPO) added to the raw reward
    step: int = 0  # RL steps done before this one (training progress)
