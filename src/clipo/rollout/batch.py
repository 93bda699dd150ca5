"""The batch of rollouts that an engine returns and the update consumes.

Shapes: `B` prompts, `G` rollouts a prompt, `N = B * G`, `P` padded prompt length,
`T` response length (the longest response in the batch), `D` hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RolloutBatch:
    sequences: torch.Tensor  # [N, P+T] left-padded prompt, then the response (padded after EOS)
    attention_mask: torch.Tensor  # [N, P+T] 1 on prompt and response tokens (EOS included)
    response_mask: torch.Tensor  # [N, T] bool, response tokens up to and including EOS
    prompt_len: int  # P
    groups: torch.Tensor  # [N] the record each rollout answers, as an index into the records sampled for it
    prompts: list[str]  # N prompt texts as the policy saw them (the chat template applied once, by the engine)
    responses: list[str]  # N decoded responses
    ground_truths: list[str]  # N, one per rollout (its record's)
    truncated: torch.Tensor  # [N] bool, no EOS within max_new_tokens
    # [N, T, D] captured layer at the response tokens' own positions: row t is the state at response
    # token t; only rows t <= L-2 of a length-L rollout exist in generation (see `hidden_mask`)
    hidden: torch.Tensor | None = None
    sampling_logprobs: torch.Tensor | None = None  # [N, T] the engine's log-probs of the sampled tokens (vllm)
    # [N] long: the policy version (weight pushes into the engine) that sampled each rollout, for engines with
    # their own copy of the weights (vllm, vllm_server); the asynchronous pipeline's staleness is measured on it
    versions: torch.Tensor | None = None

    @property
    def response_ids(self) -> torch.Tensor:  # [N, T]
        return self.sequences[:, self.prompt_len :]

    @property
    def response_lengths(self) -> torch.Tensor:  # [N]
        return self.response_mask.sum(-1)

    @property
    def hidden_mask(self) -> torch.Tensor:  # [N, T] bool
        """The rows of `hidden` that poolers use (see `hidden_mask_from_response`)."""
        return hidden_mask_from_response(self.response_mask)

    def select(self, index: torch.Tensor) -> "RolloutBatch":
        """The rollouts at `index` (e.g. a mini-batch), sharing the same padding."""
        pick = index.tolist()
        return RolloutBatch(
            sequences=self.sequences[index],
            attention_mask=self.attention_mask[index],
            response_mask=self.response_mask[index],
            prompt_len=self.prompt_len,
            groups=self.groups[index],
            prompts=[self.prompts[i] for i in pick],
            responses=[self.responses[i] for i in pick],
            ground_truths=[self.ground_truths[i] for i in pick],
            truncated=self.truncated[index],
            hidden=None if self.hidden is None else self.hidden[index],
            sampling_logprobs=None if self.sampling_logprobs is None else self.sampling_logprobs[index],
            versions=None if self.versions is None else self.versions[index],
        )


def per_rollout(values: list, group_size: int) -> list:
    """Per-record values as one per rollout: record i's for rollouts i*G..i*G+G-1 (how every engine lays out a
    batch; everything downstream reads the batch's per-rollout fields, or `groups` into the records)."""
    return [value for value in values for _ in range(group_size)]


def response_mask_from_ids(response_ids: torch.Tensor, eos_token_ids: list[int]) -> torch.Tensor:
    """[N, T] bool: True up to and including the first EOS of each row (all True if none)."""
    is_eos = torch.isin(response_ids, torch.tensor(eos_token_ids, device=response_ids.device))
    ended_before = (is_eos.cumsum(-1) - is_eos.long()) > 0
    return ~ended_before


def hidden_mask_from_response(response_mask: torch.Tensor) -> torch.Tensor:
    """[N, T] bool: the hidden-state rows CLIPO pools, the response mask shifted left by one.

    As the official code pools (its SGLang patch averages the decode steps' states and drops the
    prefill's): the states at response tokens 0..L-2 of a length-L rollout, i.e. those that predict
    tokens 1..L-1. The last token is never fed back while sampling, so it has no state; a rollout
    of length 1 has none at all (an empty row, which poolers map to zeros).

    Args:
        response_mask: [N, T] bool, True on response tokens (a prefix of each row).
    """
    return torch.cat([response_mask[:, 1:], response_mask.new_zeros(response_mask.shape[0], 1)], dim=1).bool()


def pad_time(x: torch.Tensor, left: int, right: int, value: float | bool) -> torch.Tensor:
    """Pad dimension 1 (time) of an [N, L] or [N, L, D] tensor with `value`."""
    out = x.new_full((x.shape[0], left + x.shape[1] + right, *x.shape[2:]), value)
    out[:, left : left + x.shape[1]] = x
    return out


def concat_rollouts(batches: list[RolloutBatch], pad_token_id: int) -> RolloutBatch:
    """One batch from several (e.g. DAPO refills): prompts re-padded on the left, responses on
    the right, hidden states padded with zeros; group ids offset so they stay distinct."""
    if len(batches) == 1:
        return batches[0]
    P = max(b.prompt_len for b in batches)
    T = max(b.response_ids.shape[1] for b in batches)

    def parts(b: RolloutBatch, x: torch.Tensor, value: float) -> torch.Tensor:
        prompt, response = x[:, : b.prompt_len], x[:, b.prompt_len :]
        return torch.cat([pad_time(prompt, P - b.prompt_len, 0, value), pad_time(response, 0, T - response.shape[1], value)], 1)

    offsets = torch.cumsum(torch.tensor([0] + [int(b.groups.max()) + 1 for b in batches[:-1]]), 0).tolist()
    with_hidden = all(b.hidden is not None for b in batches)
    with_logprobs = all(b.sampling_logprobs is not None for b in batches)
    return RolloutBatch(
        sequences=torch.cat([parts(b, b.sequences, pad_token_id) for b in batches]),
        attention_mask=torch.cat([parts(b, b.attention_mask, 0) for b in batches]),
        response_mask=torch.cat([pad_time(b.response_mask, 0, T - b.response_mask.shape[1], False) for b in batches]),
        prompt_len=P,
        groups=torch.cat([b.groups + offset for b, offset in zip(batches, offsets)]),
        prompts=[p for b in batches for p in b.prompts],
        responses=[r for b in batches for r in b.responses],
        ground_truths=[g for b in batches for g in b.ground_truths],
        truncated=torch.cat([b.truncated for b in batches]),
        hidden=torch.cat([pad_time(b.hidden, 0, T - b.hidden.shape[1], 0.0) for b in batches]) if with_hidden else None,
        sampling_logprobs=torch.cat([pad_time(b.sampling_logprobs, 0, T - b.sampling_logprobs.shape[1], 0.0) for b in batches])
        if with_logprobs
        else None,
        versions=torch.cat([b.versions for b in batches]) if all(b.versions is not None for b in batches) else None,
    )
