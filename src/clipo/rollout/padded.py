"""The padded training forward: one decoder call over every rollout's own copy of its prompt.

For models that cannot share a prompt through the KV cache (`clipo.rollout.shared_prompt`); shapes
as in `clipo.rollout.batch`, `M` response tokens.
"""

from __future__ import annotations

import torch

from clipo.rollout.shared_prompt import SplitStates


def padded_states(
    model: torch.nn.Module, sequences: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
    prompt_len: int, groups: torch.Tensor, hidden_layer: int | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(final-layer states predicting each response token [M, D], `hidden_layer`'s at the response tokens
    [n, T, D] or None); `groups` is unused (every rollout computes its own prompt)."""
    P = prompt_len
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # follow the left padding, as generation did
    out = model.get_decoder()(input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids,
                              output_hidden_states=hidden_layer is not None, use_cache=False)
    final = SplitStates(out.last_hidden_state[:, P - 1 : P], out.last_hidden_state[:, P:])
    chosen = None if hidden_layer is None else out.hidden_states[hidden_layer][:, P:]
    return final.predicting(response_mask), chosen
