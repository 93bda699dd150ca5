"""The training forward over sampled rollouts: log-probs, entropy and hidden states.

Shapes as in `clipo.rollout.batch`; `V` vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipo.rollout.batch import RolloutBatch


@dataclass
class ForwardOutput:
    logprobs: torch.Tensor  # [n, T] log-prob of each response token
    entropy: torch.Tensor | None  # [n, T] (no grad), when asked for
    hidden: torch.Tensor | None  # [n, T, D] chosen layer at the response tokens (row t: token t), when asked for


def forward_responses(
    model: torch.nn.Module,
    rollouts: RolloutBatch,
    temperature: float = 1.0,
    hidden_layer: int | None = None,
    with_entropy: bool = False,
) -> ForwardOutput:
    """Log-probs of the response tokens under `model` (with grad if enabled by the caller).

    The LM head runs on the T predicting positions only, not on the prompt, so the
    full-vocabulary logits are [n, T, V] rather than [n, P+T, V]. Logits are divided
    by the sampling temperature, so the ratio compares the distributions that sampled.
    Position ids follow the left padding, as generation used them.
    """
    mask = rollouts.attention_mask
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model.get_decoder()(
        input_ids=rollouts.sequences,
        attention_mask=mask,
        position_ids=position_ids,
        output_hidden_states=hidden_layer is not None,
        use_cache=False,
    )
    P, T = rollouts.prompt_len, rollouts.response_ids.shape[1]
    predicting = out.last_hidden_state[:, P - 1 : P + T - 1]  # [n, T, D]
    logits = model.get_output_embeddings()(predicting).float() / temperature  # [n, T, V]
    targets = rollouts.response_ids
    log_normalizer = torch.logsumexp(logits, dim=-1)  # [n, T], shared by log-probs and entropy
    logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_normalizer
    entropy = None
    if with_entropy:
        with torch.no_grad():
            probs = torch.softmax(logits, dim=-1)
            entropy = log_normalizer.detach() - (probs * logits).sum(-1)
    hidden = None
    if hidden_layer is not None:
        # CLIPO's states: at the response tokens' own positions P..P+T-1 (not the predicting ones),
        # as generation captures them; poolers read the rows in `rollouts.hidden_mask`
        hidden = out.hidden_states[hidden_layer][:, P : P + T]
    return ForwardOutput(logprobs=logprobs, entropy=entropy, hidden=hidden)
