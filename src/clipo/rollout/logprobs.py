"""Log-probs and entropy of chosen tokens from hidden states, in chunks of positions.

The LM head's full-vocabulary float32 logits of a micro-batch ([n, T, V]: 1.6 GB for 8
rollouts of 1024 tokens with SmolLM2's 49k vocabulary) never exist at once: the head runs
on one chunk of positions at a time, and in the backward pass each chunk's logits are
recomputed (activation checkpointing) instead of kept. This is what Liger's fused loss
gives TRL users and verl's chunked entropy gives verl's. The number of chunks is given, not
derived from the positions: under ZeRO-3 each call of the head gathers its weight, so every
rank must make as many (`clipo.rollout.forward.TrainingForward.head_chunks`, agreed per
micro-batch by `clipo.rl.batching`); a chunk may then be empty.

Shapes: `M` positions (the response tokens of a micro-batch, flattened), `D` hidden
size, `V` vocabulary size.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK_SIZE = 512  # positions a chunk at most: 512 x 49152 float32 logits = 100 MB for SmolLM2


def _chunk_logprobs(
    head: torch.nn.Module, states: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk: [c, D] states, [c] targets -> log-probs [c] and entropy [c] (no grad; empty if not asked)."""
    logits = head(states).float() / temperature  # [c, V]
    log_normalizer = torch.logsumexp(logits, dim=-1)  # [c], shared by log-probs and entropy
    logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_normalizer
    entropy = logprobs.new_empty(0)
    if with_entropy:
        with torch.no_grad():
            entropy = log_normalizer - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return logprobs, entropy


def token_logprobs(
    head: torch.nn.Module,
    states: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunks: int = 1,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-softmax of `head(states) / temperature` at `targets`, and its entropy, chunk by chunk.

    Args:
        head: the LM head (the output embedding; tied or not, with or without bias).
        states: [M, D] hidden states at the positions predicting each target.
        targets: [M] token ids.
        temperature: the sampling temperature the logits are divided by.
        with_entropy: also return the entropy [M] of each position's distribution (no grad).
        chunks: calls of the head, each on an equal share of the M positions (some empty when M < chunks);
            the peak extra memory is about 3 x ceil(M / chunks) x V floats.

    Returns:
        (logprobs [M], with grad when `states` or the head need it; entropy [M] or None).
    """
    if chunks < 1:
        raise ValueError(f"chunks={chunks} must be at least 1")
    needs_grad = torch.is_grad_enabled() and (
        states.requires_grad or any(p.requires_grad for p in head.parameters())
    )
    logprobs, entropy = [], []
    # exactly `chunks` pieces, empty ones included (each still calls the head, and keeps the graph attached)
    for chunk_states, chunk_targets in zip(states.tensor_split(chunks), targets.tensor_split(chunks)):
        if needs_grad:  # keep only the chunk's inputs; its logits are recomputed in the backward pass
            lp, ent = checkpoint(_chunk_logprobs, head, chunk_states, chunk_targets, temperature, with_entropy,
                                 use_reentrant=False)
        else:
            lp, ent = _chunk_logprobs(head, chunk_states, chunk_targets, temperature, with_entropy)
        logprobs.append(lp)
        entropy.append(ent)
    return torch.cat(logprobs), (torch.cat(entropy) if with_entropy else None)
