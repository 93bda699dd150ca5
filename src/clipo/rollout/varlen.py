"""Padding-free training forward for variable-length attention kernels (flash-attention).

Each rollout's own prompt (its real tokens) then its response (its real tokens), rollouts back
to back in one row [1, N], position ids restarting at 0 for each rollout, and no attention mask.
transformers 5.19 then splits the row at the position-id restarts itself:
- flash kernels (`modeling_flash_attention_utils._flash_attention_forward`): with no mask and a
  single row, `_is_packed_sequence` sees the restarts and `prepare_fa_kwargs_from_position_ids`
  makes `cu_seqlens` for the varlen kernel, so no padding and no mask is computed;
- SDPA / eager (`masking_utils.create_causal_mask`): with no mask, `find_packed_sequence_indices`
  finds the same sequences and the causal mask becomes block-diagonal (dense; this is how the
  layout is tested on a CPU).

Unlike `clipo.rollout.shared_prompt`, each rollout recomputes its prompt: cu_seqlens delimit disjoint
sequences, they cannot let G responses read one prompt. That is cheap where varlen kernels run:
prompts of a few hundred tokens against responses of 2-4k tokens make the repeats a few percent
of the tokens, and attention over a sequence costs its own length squared, not the row's.

One row only: `_is_packed_sequence` requires a batch of one (several rows would run the plain
flash kernel over each whole row, across rollouts), and the micro-batch token budget bounds N.

Shapes as in `clipo.rollout.batch`; `N` tokens of the row, `M` response tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from transformers.integrations.flash_attention import flash_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


class VarlenRow(NamedTuple):
    input_ids: torch.Tensor  # [1, N]
    position_ids: torch.Tensor  # [1, N] restarting at 0 for each rollout
    predicting: torch.Tensor  # [M] index into the N states of the state predicting each response token
    own: torch.Tensor  # [n, T] index of each response token's own state (0 outside the response)


def is_varlen_attention(attn_implementation: str | None) -> bool:
    """Whether transformers runs `attn_implementation` through `_flash_attention_forward`, which packs
    by position ids: flash_attention_2/3/4 and hub kernels with a `flash_attn_varlen_func` (such as
    "kernels-community/flash-attn2"), which transformers registers with the same two functions."""
    if attn_implementation is None:
        return False
    attention = ALL_ATTENTION_FUNCTIONS._global_mapping.get(attn_implementation)
    mask = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(attn_implementation)
    return attention is flash_attention_forward and mask is flash_attention_mask


def uses_varlen_attention(model: torch.nn.Module) -> bool:
    return is_varlen_attention(getattr(model.config, "_attn_implementation", None))


def varlen_rows(
    sequences: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor, P: int
) -> VarlenRow:
    """The varlen layout of `n` rollouts (left-padded prompts of width P, right-padded responses).

    Args:
        sequences, attention_mask: [n, P+T]; each prompt has at least one real token.
        response_mask: [n, T] bool, a prefix of each row (the response part of `attention_mask`).

    Returns:
        the row's `input_ids`, `position_ids` [1, N], `predicting` [M] and `own` [n, T] indices.
    """
    response_mask = response_mask.bool()
    real = torch.cat([attention_mask[:, :P].bool(), response_mask], 1)  # [n, P+T]
    has_response = response_mask.any(-1, keepdim=True)  # [n, 1]
    if has_response.any():  # a rollout with an empty response predicts nothing: leave it out
        real = real & has_response  # (all empty: keep the prompts, so the forward still has tokens)
    slot = real.flatten().cumsum(0).view_as(real) - 1  # [n, P+T] index of each real token in the row
    positions = real.cumsum(-1) - 1  # [n, P+T] restarting at 0 per rollout, as the padded forward numbers them
    own = slot[:, P:].masked_fill(~response_mask, 0)  # [n, T]
    predicting = slot[:, P - 1 : -1][response_mask]  # [M] the state before each response token
    return VarlenRow(sequences[real].unsqueeze(0), positions[real].unsqueeze(0), predicting, own)


def varlen_states(
    model: torch.nn.Module, sequences: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
    prompt_len: int, groups: torch.Tensor, hidden_layer: int | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(final-layer states predicting each response token [M, D], `hidden_layer`'s at the response tokens
    [n, T, D] (0 outside the response) or None), from one decoder call over the varlen row; `groups` is
    unused (every rollout computes its own prompt)."""
    row = varlen_rows(sequences, attention_mask, response_mask, prompt_len)
    out = model.get_decoder()(input_ids=row.input_ids, position_ids=row.position_ids, attention_mask=None,
                              output_hidden_states=hidden_layer is not None, use_cache=False)
    chosen = None
    if hidden_layer is not None:
        states = out.hidden_states[hidden_layer][0][row.own]  # [n, T, D]
        chosen = states * response_mask.unsqueeze(-1).to(states.dtype)
    return out.last_hidden_state[0][row.predicting], chosen
