"""A group's prompt computed once: its G responses attend to one copy of its keys and values.

The G rollouts of a group share their prompt tokens, so the training forward runs each
distinct prompt once (a `DynamicCache` is filled), picks each response's prompt from that
cache along the batch dimension (an index, so the gradient of every response flows back
into the one shared prompt computation), and runs the responses on top. Mathematically the
same as the padded forward over the G copies (causal attention: prompt positions never see
the response), at 1/G of the prompt's cost.

Shapes as in `clipo.rollout.batch`; `B'` distinct prompts in the micro-batch.
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

SUPPORTED_ATTENTION = ("sdpa", "eager")


class PromptRows(NamedTuple):
    first: torch.Tensor  # [B'] one row of each distinct prompt
    rows: torch.Tensor  # [n] each rollout's index into `first`


def prompt_rows(groups: torch.Tensor, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> PromptRows | None:
    """Distinct prompts by group id, or None when two rollouts of a group differ in prompt tokens.

    Args:
        groups: [n] group ids (rollouts of one group share a prompt).
        prompt_ids: [n, P] left-padded prompt tokens.
        prompt_mask: [n, P] 1 on real prompt tokens.
    """
    _, rows = torch.unique(groups, return_inverse=True)  # [n] in 0..B'-1
    n = rows.numel()
    first = torch.full((int(rows.max()) + 1 if n else 0,), n, dtype=torch.long, device=rows.device)
    first = first.scatter_reduce(0, rows, torch.arange(n, device=rows.device), reduce="amin")  # [B']
    same_mask = torch.equal(prompt_mask[first][rows], prompt_mask)
    same_tokens = bool(((prompt_ids[first][rows] == prompt_ids) | (prompt_mask == 0)).all())
    return PromptRows(first, rows) if same_mask and same_tokens else None


def _cache_argument(decoder: torch.nn.Module) -> str | None:
    params = inspect.signature(decoder.forward).parameters  # follows functools.wraps to the real forward
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why `model` cannot share prompts through its cache (None when it can); asked once, by the plan."""
    decoder = model.get_decoder()
    if _cache_argument(decoder) is None:
        return f"{type(decoder).__name__}.forward takes no KV cache"
    attention = getattr(model.config, "_attn_implementation", None)
    if attention not in SUPPORTED_ATTENTION:
        return f"attention implementation {attention!r} (shared prompts are checked with {', '.join(SUPPORTED_ATTENTION)})"
    if any(type(layer) is not DynamicLayer for layer in DynamicCache(config=model.config).layers):
        return "the model's cache has sliding-window or other non-plain layers"
    if any(getattr(m, "gradient_checkpointing", False) for m in decoder.modules()):
        return "gradient checkpointing drops the KV cache inside checkpointed layers"
    return None


class SplitStates(NamedTuple):
    """A layer's states split at the prompt/response boundary."""

    prompt_last: torch.Tensor  # [n, 1, D] the last prompt position (predicts response token 0)
    response: torch.Tensor  # [n, T, D] the response positions

    def predicting(self, response_mask: torch.Tensor) -> torch.Tensor:
        """[M, D] the state before each response token (`response_mask` [n, T] bool)."""
        return torch.cat([self.prompt_last, self.response[:, :-1]], 1)[response_mask]


def shared_prompt_forward(
    model: torch.nn.Module,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: int,
    prompt: PromptRows,
    hidden_layer: int | None,
) -> tuple[SplitStates, SplitStates | None]:
    """Final-layer states (and `hidden_layer`'s) of the rollouts, each distinct prompt run once.

    Args:
        sequences, attention_mask: [n, P+T] left-padded prompts, then responses.
        prompt: the distinct prompts (`prompt_rows`).

    Returns:
        (final-layer states, chosen layer's states or None), split at the prompt/response boundary.
    """
    decoder = model.get_decoder()
    cache_arg = _cache_argument(decoder)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # follow the left padding, as generation did
    P, first, rows = prompt_len, prompt.first, prompt.rows
    with_states = hidden_layer is not None
    cache = DynamicCache(config=model.config)
    prompt_out = decoder(
        input_ids=sequences[first, :P], attention_mask=attention_mask[first, :P], position_ids=positions[first, :P],
        use_cache=True, output_hidden_states=with_states, **{cache_arg: cache},
    )
    cache.batch_select_indices(rows)  # [B'] -> [n] keys and values; indexing keeps the autograd graph
    response_out = decoder(
        input_ids=sequences[:, P:], attention_mask=attention_mask, position_ids=positions[:, P:],
        use_cache=True, output_hidden_states=with_states, **{cache_arg: cache},
    )
    final = SplitStates(prompt_out.last_hidden_state[rows, -1:], response_out.last_hidden_state)
    chosen = None
    if with_states:
        chosen = SplitStates(prompt_out.hidden_states[hidden_layer][rows, -1:], response_out.hidden_states[hidden_layer])
    return final, chosen


def shared_prompt_states(
    model: torch.nn.Module, sequences: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
    prompt_len: int, groups: torch.Tensor, hidden_layer: int | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(final-layer states predicting each response token [M, D], `hidden_layer`'s at the response tokens
    [n, T, D] or None), each group's prompt run once; rollouts of a group with different prompt tokens
    each run their own (still two decoder calls: the plan's, on every rank)."""
    prompt = prompt_rows(groups, sequences[:, :prompt_len], attention_mask[:, :prompt_len])
    if prompt is None:
        rows = torch.arange(len(sequences), device=sequences.device)
        prompt = PromptRows(rows, rows)
    final, chosen = shared_prompt_forward(model, sequences, attention_mask, prompt_len, prompt, hidden_layer)
    return final.predicting(response_mask), None if chosen is None else chosen.response
