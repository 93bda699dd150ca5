"""What an engine without hidden states leaves out, from one training forward over its rollouts.

vLLM returns tokens and its own log-probs but no hidden states. CLIPO's representations (reward
mode) and the trainer's old log-probs (for the PPO ratio across several updates, and for the
importance weights against the engine's log-probs) then come from a single no-grad pass of the
policy over the sampled batch, in micro-batches: the same `forward_responses` the update uses, so
both pool the same positions and compute the same log-probs. Shapes as in `clipo.rollout.batch`.
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
    micro_batch_size: int,
) -> ForwardOutput:
    """Log-probs [N, T] of the sampled tokens under `policy` (logits / `temperature`) and, with
    `hidden_layer`, that layer's states [N, T, D] at the positions predicting each token."""
    index = torch.arange(len(rollouts.responses), device=rollouts.sequences.device)
    parts = [forward_responses(policy, rollouts.select(i), temperature, hidden_layer) for i in index.split(micro_batch_size)]
    hidden = None if hidden_layer is None else torch.cat([p.hidden for p in parts])
    return ForwardOutput(logprobs=torch.cat([p.logprobs for p in parts]), entropy=None, hidden=hidden)


def needs_training_forward(rollouts: RolloutBatch, capture_layer: int | None, need_old_logprobs: bool) -> bool:
    """Whether the collector must run `training_forward`: hidden states are wanted but the engine gave
    none, or the trainer's old log-probs are wanted (several updates, importance weights)."""
    return (capture_layer is not None and rollouts.hidden is None) or need_old_logprobs
