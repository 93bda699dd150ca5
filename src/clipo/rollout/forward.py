"""The training forward over sampled rollouts: log-probs, entropy and hidden states.

Three things keep it at the compute limit, none of which changes a value or a gradient:
- packed (`packed=True`), no padded token is computed: on a variable-length attention kernel
  (flash-attention) the rollouts run back to back in one row, each with its own prompt
  (`clipo.rollout.varlen`); on SDPA / eager they are packed into rows, each group's prompt once,
  its responses attending to it through a prefix-sharing mask (`clipo.rollout.packed`);
- padded, or where a model cannot take such a mask, the columns padded in every rollout are
  cropped and each distinct prompt runs once into a KV cache its responses read
  (`clipo.rollout.shared_prompt`), or one padded forward runs over every rollout's own prompt;
- the LM head runs on the response tokens only, chunk by chunk, recomputed in the backward
  pass (`clipo.rollout.logprobs`), so the [n, T, V] float32 logits never exist at once; entropy
  comes from the same chunks (when asked for), not from a second pass over the vocabulary.

Shapes as in `clipo.rollout.batch`; `V` vocabulary size, `M` response tokens of the micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clipo.rollout.batch import RolloutBatch
from clipo.rollout.logprobs import DEFAULT_CHUNK_SIZE, token_logprobs
from clipo.rollout.packed import default_row_tokens, pack_rows, packed_states, packing_unsupported_reason
from clipo.rollout.shared_prompt import (
    PromptRows,
    SplitStates,
    prompt_rows,
    shared_prompt_forward,
    unsupported_reason,
    warn_once,
)
from clipo.rollout.varlen import uses_varlen_attention, varlen_rows


@dataclass
class ForwardOutput:
    logprobs: torch.Tensor | None  # [n, T] log-prob of each response token (0 after the response's end), when asked for
    entropy: torch.Tensor | None  # [n, T] (no grad), when asked for (0 after the response's end)
    hidden: torch.Tensor | None  # [n, T, D] chosen layer at the response tokens (row t: token t), when asked for


def forward_responses(
    model: torch.nn.Module,
    rollouts: RolloutBatch,
    temperature: float = 1.0,
    hidden_layer: int | None = None,
    with_entropy: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    packed: bool = False,
    row_tokens: int | None = None,
    varlen: bool | None = None,
    with_logprobs: bool = True,
) -> ForwardOutput:
    """Log-probs of the response tokens under `model` (with grad if enabled by the caller).

    Logits are divided by the sampling temperature, so the ratio compares the distributions
    that sampled. Position ids follow the left padding, as generation used them. Values at
    positions outside `response_mask` are 0 (they are masked out everywhere downstream).

    Args:
        chunk_size: response positions per LM-head chunk (`clipo.rollout.logprobs`).
        packed: pack the rollouts padding-free where the model allows (False: the padded paths).
        row_tokens: the longest prefix-sharing row (None: `clipo.rollout.packed.default_row_tokens`).
        varlen: with `packed`, the varlen layout (True) or prefix-sharing rows (False), as the builders
            decided it (`UpdateBatching.varlen`); None: varlen exactly when the model's attention is a
            varlen kernel (for direct callers; True forces it on SDPA, for tests).
        with_logprobs: False skips the LM head (hidden states alone: CLIPO's for an engine without them).
    """
    sequences, attention_mask, P, T = _cropped(rollouts)
    mask = rollouts.response_mask[:, :T]  # [n, T]
    predicting, chosen = _states(model, rollouts.groups, sequences, attention_mask, mask, P, hidden_layer,
                                 packed, row_tokens, varlen)  # [M, D], [n, T, D] or None
    full_mask = rollouts.response_mask.bool()  # [n, T_batch]; True only within the first T columns
    logprobs = entropy = None
    if with_logprobs:
        logprobs, entropy = token_logprobs(
            model.get_output_embeddings(), predicting, sequences[:, P:][mask], temperature, with_entropy, chunk_size
        )  # [M] each
        logprobs = logprobs.new_zeros(full_mask.shape).masked_scatter(full_mask, logprobs)
    if entropy is not None:
        entropy = entropy.new_zeros(full_mask.shape).masked_scatter(full_mask, entropy)
    hidden = None
    if hidden_layer is not None:
        # CLIPO's states: at the response tokens' own positions (not the predicting ones), as generation
        # captures them; poolers read the rows in `rollouts.hidden_mask`
        hidden = F.pad(chosen, (0, 0, 0, full_mask.shape[1] - chosen.shape[1]))  # [n, T_batch, D]
    return ForwardOutput(logprobs=logprobs, entropy=entropy, hidden=hidden)


def _states(
    model: torch.nn.Module, groups: torch.Tensor, sequences: torch.Tensor, attention_mask: torch.Tensor,
    mask: torch.Tensor, P: int, hidden_layer: int | None, packed: bool, row_tokens: int | None,
    varlen: bool | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(final-layer states predicting each response token [M, D], `hidden_layer`'s at the response
    tokens [n, T, D] or None): packed where the model allows, else through the padded paths."""
    if packed and (uses_varlen_attention(model) if varlen is None else varlen):
        return packed_states(model, varlen_rows(sequences, attention_mask, mask, P), hidden_layer, mask)
    reason = packing_unsupported_reason(model) if packed else "packing was turned off"
    if reason is None:
        prompt = prompt_rows(groups, sequences[:, :P], attention_mask[:, :P])
        if prompt is None:  # no sharing, still padding-free
            warn_once("rollouts of one group have different prompt tokens", "each rollout's prompt is computed")
            n = torch.arange(len(sequences), device=sequences.device)
            prompt = PromptRows(n, n)
        rows = pack_rows(sequences, attention_mask, mask, P, prompt, row_tokens or default_row_tokens(model.config))
        predicting, chosen = packed_states(model, rows, hidden_layer, mask)  # [M, D], [n, T, D]
    else:
        if packed:
            warn_once(reason, "padding-free packing is off")
        final, split = _split_states(model, groups, sequences, attention_mask, P, hidden_layer)
        predicting = torch.cat([final.prompt_last, final.response[:, :-1]], 1)[mask]  # [M, D] predicting each token
        chosen = None if split is None else split.response  # [n, T, D]
    return predicting, chosen


def _cropped(rollouts: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(sequences, attention_mask [n, P'+T'], P', T') without the columns padded in every rollout:
    the prompt's common left padding and the response columns after the longest response."""
    mask, P = rollouts.attention_mask, rollouts.prompt_len
    start = int(mask[:, :P].any(0).long().argmax())  # first prompt column some rollout uses
    used = rollouts.response_mask.any(0).nonzero()
    T = int(used.max()) + 1 if used.numel() else 1
    return rollouts.sequences[:, start : P + T], mask[:, start : P + T], P - start, T


def _split_states(
    model: torch.nn.Module,
    groups: torch.Tensor,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    P: int,
    hidden_layer: int | None,
) -> tuple[SplitStates, SplitStates | None]:
    """Final-layer and chosen-layer states, through the shared prompt where the model allows."""
    reason = unsupported_reason(model)
    prompt = None
    if reason is None:
        prompt = prompt_rows(groups, sequences[:, :P], attention_mask[:, :P])
        if prompt is None:
            reason = "rollouts of one group have different prompt tokens"
    if reason is not None:
        warn_once(reason)
    if prompt is None or len(prompt.first) == len(groups):  # nothing shared: one padded pass is cheaper
        return _padded_forward(model, sequences, attention_mask, P, hidden_layer)
    return shared_prompt_forward(model, sequences, attention_mask, P, prompt, hidden_layer)


def _padded_forward(
    model: torch.nn.Module, sequences: torch.Tensor, attention_mask: torch.Tensor, P: int, hidden_layer: int | None
) -> tuple[SplitStates, SplitStates | None]:
    """One forward over every rollout's own copy of its prompt."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model.get_decoder()(
        input_ids=sequences,
        attention_mask=attention_mask,
        position_ids=position_ids,
        output_hidden_states=hidden_layer is not None,
        use_cache=False,
    )
    final = SplitStates(out.last_hidden_state[:, P - 1 : P], out.last_hidden_state[:, P:])
    chosen = None
    if hidden_layer is not None:
        states = out.hidden_states[hidden_layer]
        chosen = SplitStates(states[:, P - 1 : P], states[:, P:])
    return final, chosen
