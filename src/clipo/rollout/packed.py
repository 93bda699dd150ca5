"""Padding-free training forward: a micro-batch's rollouts packed into rows, each prompt once.

A row holds blocks; a block is one group's prompt (its real tokens only) followed by some of
that group's responses (their real tokens only). A 4-D mask lets each response token attend to
its block's prompt and to the earlier tokens of its own response (prefix sharing), and each
prompt token to the earlier prompt tokens; position ids restart per response after the prompt,
as generation numbered them. So every computed token is a real one, and the values equal the
padded forward over every rollout's own prompt copy (causal attention: a prompt never sees its
responses). Rows are padded to the longest row only (one short row at most).

The attention kernels (SDPA, eager) take the mask densely: a token attends over its whole row,
so a row's length is bounded (`row_tokens`) to keep attention a small share of a token's cost.

Shapes as in `clipo.rollout.batch`; `R` rows, `L` row length, `M` response tokens, `D` hidden.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from clipo.rollout.shared_prompt import PromptRows

PACKED_ATTENTION = ("sdpa", "eager")  # kernels that take a custom 4-D mask as given
# a row's dense attention costs at most this share of a token's matmul FLOPs: the masked softmax is memory-bound,
# so it costs more time than its FLOPs say (SmolLM2-135M, 2 CPU threads, 32 rollouts of <= 64 tokens: rows of
# 128 / 256 / 384 / ~700 tokens took 59 / 48 / 44 / 49 s, shared load, one run each)
ATTENTION_SHARE = 0.1


def packing_unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why `model` cannot run packed rows with a custom mask (None when it can)."""
    attention = getattr(model.config, "_attn_implementation", None)
    if attention not in PACKED_ATTENTION:
        return f"attention implementation {attention!r} (packed rows need a custom mask: {', '.join(PACKED_ATTENTION)})"
    layer_types = set(getattr(model.config, "layer_types", None) or [])
    if layer_types - {"full_attention"} or getattr(model.config, "use_sliding_window", False):
        return "the model has sliding-window or other non-causal layers (a custom mask would replace their window)"
    return None


def default_row_tokens(config) -> int:
    """Row length at which dense attention costs `ATTENTION_SHARE` of the matmuls of a token.

    Per layer and token, the projections and MLP cost about 2 x (4 D^2 + 3 D I) FLOPs and
    attention over a row of L tokens 4 L D (scores and values): SmolLM2-135M gets ~350 tokens,
    an 8B Llama ~3000."""
    d, inner = config.hidden_size, getattr(config, "intermediate_size", 4 * config.hidden_size)
    matmul = 2 * (4 * d * d + 3 * d * inner)
    return max(64, int(ATTENTION_SHARE * matmul / (4 * d)))


class PackedRows(NamedTuple):
    input_ids: torch.Tensor  # [R, L]
    position_ids: torch.Tensor  # [R, L]
    allowed: torch.Tensor | None  # [R, 1, L, L] bool: query (row 2) may attend to key (row 3); None: no mask
    predicting: torch.Tensor  # [M] flat index into R*L of the state predicting each response token
    own: torch.Tensor  # [n, T] flat index of each response token's own position (0 outside the response)


def pack_rows(
    sequences: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor, P: int,
    prompt: PromptRows, row_tokens: int,
) -> PackedRows:
    """The packed layout of `n` rollouts (left-padded prompts of width P, right-padded responses).

    Args:
        sequences, attention_mask: [n, P+T].
        response_mask: [n, T] bool, a prefix of each row.
        prompt: each rollout's distinct prompt (rollouts with the same one share a block).
        row_tokens: the longest row; a block that would overflow it starts a new row (its prompt again).
    """
    prompt_lens = attention_mask[:, :P].sum(-1).tolist()
    lens = response_mask.sum(-1).tolist()
    members: dict[int, list[int]] = {}
    for i, b in enumerate(prompt.rows.tolist()):
        members.setdefault(b, []).append(i)
    rows: list[list[tuple[int, list[int]]]] = [[]]  # each row: blocks (prompt owner, responses)
    used = 0
    for block_rollouts in members.values():
        p, block = prompt_lens[block_rollouts[0]], None
        for i in block_rollouts:
            if block is not None and used + lens[i] <= row_tokens:
                block[1].append(i)
                used += lens[i]
                continue
            if rows[-1] and used + p + lens[i] > row_tokens:
                rows.append([])
                used = 0
            block = (block_rollouts[0], [i])
            rows[-1].append(block)
            used += p + lens[i]
    return _layout(sequences, response_mask, P, prompt_lens, lens, rows)


def _layout(sequences, response_mask, P, prompt_lens, lens, rows) -> PackedRows:
    """Token ids, positions, block/segment ids and gather indices of the planned rows."""
    n, T = response_mask.shape
    L = max(sum(prompt_lens[owner] + sum(lens[i] for i in rs) for owner, rs in row) for row in rows)
    ids, pos = [], []
    block_id, seg_id = [], []  # per token; a prompt's segment is -1 (every response of its block sees it)
    predicting = torch.zeros(n, T, dtype=torch.long)
    own = torch.zeros(n, T, dtype=torch.long)
    next_block = 0
    for r, row in enumerate(rows):
        start = r * L
        for owner, rs in row:
            p, blk = prompt_lens[owner], next_block
            next_block += 1
            ids.append(sequences[owner, P - p : P])
            pos.append(torch.arange(p))
            block_id += [blk] * p
            seg_id += [-1] * p
            last_prompt = start + p - 1
            start += p
            for i in rs:
                if lens[i] == 0:  # nothing to predict (an empty response has no tokens in the row)
                    continue
                ids.append(sequences[i, P : P + lens[i]])
                pos.append(torch.arange(p, p + lens[i]))
                block_id += [blk] * lens[i]
                seg_id += [i] * lens[i]
                own[i, : lens[i]] = torch.arange(start, start + lens[i])
                predicting[i, : lens[i]] = torch.cat([torch.tensor([last_prompt]), own[i, : lens[i] - 1]])
                start += lens[i]
        pad = (r + 1) * L - start
        ids.append(sequences.new_zeros(pad))
        pos.append(torch.zeros(pad, dtype=torch.long))
        block_id += list(range(next_block, next_block + pad))  # each padding token alone: it attends to itself
        next_block += pad
        seg_id += [-2] * pad
    device = sequences.device
    block = torch.tensor(block_id).view(len(rows), L)
    seg = torch.tensor(seg_id).view(len(rows), L)
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    same_block = block[:, :, None] == block[:, None, :]
    sees = (seg[:, :, None] == seg[:, None, :]) | (seg[:, None, :] == -1)
    allowed = (causal & same_block & sees).unsqueeze(1)  # [R, 1, L, L]
    mask = response_mask.cpu().bool()
    return PackedRows(
        input_ids=torch.cat(ids).view(len(rows), L).to(device),
        position_ids=torch.cat(pos).view(len(rows), L).to(device),
        allowed=allowed.to(device),
        predicting=predicting[mask].to(device),
        own=own.to(device),
    )


def packed_states(
    model: torch.nn.Module, packed: PackedRows, hidden_layer: int | None, response_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(final-layer states predicting each response token [M, D], `hidden_layer`'s states at the
    response tokens' own positions [n, T, D] (0 outside the response) or None), from one packed pass."""
    decoder = model.get_decoder()
    mask = packed.allowed  # None (`clipo.rollout.varlen`): the kernel splits the row at the position-id restarts
    if mask is not None and model.config._attn_implementation == "eager":  # eager adds the mask to the scores
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    out = decoder(input_ids=packed.input_ids, attention_mask=mask, position_ids=packed.position_ids,
                  output_hidden_states=hidden_layer is not None, use_cache=False)
    final = out.last_hidden_state.flatten(0, 1)  # [R*L, D]
    hidden = None
    if hidden_layer is not None:
        chosen = out.hidden_states[hidden_layer].flatten(0, 1)[packed.own]  # [n, T, D]
        hidden = chosen * response_mask.unsqueeze(-1).to(chosen.dtype)
    return final[packed.predicting], hidden
