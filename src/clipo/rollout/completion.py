"""What an engine without hidden states leaves out, from one training forward over its rollouts.

vLLM returns tokens and its own log-probs but no hidden states. CLIPO's representations (reward
mode) and the trainer's old log-probs (for the importance weights against the engine's log-probs,
and for the PPO ratio across several updates) then come from a single no-grad pass of the policy
over the sampled batch, in micro-batches: the same `forward_responses` the update runs, so both
pool the same positions and compute the same log-probs. Shapes as in `clipo.rollout.batch`.
"""

from __future__ import annotations

import torch

from clipo.rollout.batch import RolloutBatch
from clipo.rollout.forward import ForwardOutput, forward_responses


@torch.no_grad()
def training_forward(
    policy: torch.nn.Module,
    rollouts: RolloutBatch,
    temperature: float,
    hidden_layer: int | None,
    micro_batch_size: int | None,
) -> ForwardOutput:
    """Log-probs [N, T] of the sampled tokens under `policy` (logits / `temperature`) and, with
    `hidden_layer`, that layer's states [N, T, D] at the positions predicting each token; `micro_batch_size`
    rollouts per forward (None: all at once)."""
    index = torch.arange(len(rollouts.responses), device=rollouts.sequences.device)
    chunks = index.split(micro_batch_size or len(index))
    parts = [forward_responses(policy, rollouts.select(i), temperature, hidden_layer) for i in chunks]
    hidden = None if hidden_layer is None else torch.cat([p.hidden for p in parts])
    return ForwardOutput(logprobs=torch.cat([p.logprobs for p in parts]), entropy=None, hidden=hidden)


class TrainingForwardCompletion:
    """The collector's pass for an engine that returns no hidden states (`rollout.engine=vllm`).

    Args:
        policy: the policy before this step's update (pi_old).
        temperature: the sampling temperature the log-probs are taken at.
        micro_batch_size: rollouts per forward (`ppo.micro_batch_size`; None: all).
    """

    def __init__(self, policy: torch.nn.Module, temperature: float, micro_batch_size: int | None) -> None:
        self.policy, self.temperature, self.micro_batch_size = policy, temperature, micro_batch_size

    def __call__(self, rollouts: RolloutBatch, hidden_layer: int | None) -> torch.Tensor:
        """Old log-probs [N, T]; with `hidden_layer` (and none from the engine) `rollouts.hidden` is filled in."""
        wanted = hidden_layer if rollouts.hidden is None else None
        out = training_forward(self.policy, rollouts, self.temperature, wanted, self.micro_batch_size)
        if wanted is not None:
            rollouts.hidden = out.hidden
        return out.logprobs


def needs_training_forward(rollouts: RolloutBatch, capture_layer: int | None, wants_old_logprobs: bool) -> bool:
    """Whether the collector runs the training forward: hidden states are wanted and the engine gave
    none, or the trainer's old log-probs are wanted (importance weights against the engine's)."""
    return (capture_layer is not None and rollouts.hidden is None) or wants_old_logprobs
