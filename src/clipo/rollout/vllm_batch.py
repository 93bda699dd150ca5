"""vLLM's request outputs as a `RolloutBatch`, in the hf engine's layout.

Shapes as in `clipo.rollout.batch`: prompts left-padded to `P`, responses right-padded to `T`
(the longest response), the response mask true up to and including EOS.
"""

from __future__ import annotations

from typing import Any

import torch

from clipo.rollout.batch import RolloutBatch, per_rollout


def padded(rows: list[list], value: float, left: bool, dtype: torch.dtype) -> torch.Tensor:
    """[len(rows), longest row] tensor of ragged `rows`, padded with `value` on the left or right."""
    side = "left" if left else "right"
    tensors = [torch.tensor(row, dtype=dtype) for row in rows]
    return torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=value, padding_side=side)


def rollout_batch_from_outputs(
    outputs: list[Any],
    prompt_ids: list[list[int]],
    prompt_texts: list[str],
    records: list[dict],
    group_size: int,
    tokenizer: Any,
    eos_ids: list[int],
    device: torch.device,
    version: int | None = None,
) -> RolloutBatch:
    """The batch of `vllm.LLM.generate` outputs: one request per prompt with `n = group_size`, or
    `group_size` requests of `n = 1` per prompt (greedy); rollouts i*G..i*G+G-1 belong to prompt i."""
    samples = [sample for request in outputs for sample in sorted(request.outputs, key=lambda s: s.index)]
    responses = [list(s.token_ids) for s in samples]
    logprobs = [list(s.logprobs.logprobs) for s in samples]  # flat: one (the sampled token's) per position
    versions = None if version is None else [version] * len(samples)
    return rollout_batch(responses, logprobs, prompt_ids, prompt_texts, records, group_size, tokenizer, eos_ids, device,
                         versions)


def rollout_batch(
    responses: list[list[int]],
    logprobs: list[list[float]],
    prompt_ids: list[list[int]],
    prompt_texts: list[str],
    records: list[dict],
    group_size: int,
    tokenizer: Any,
    eos_ids: list[int],
    device: torch.device,
    versions: list[int] | None = None,
) -> RolloutBatch:
    """The batch of N = len(records) x group_size sampled responses (token ids, the sampler's log-prob of
    each, and the policy version that sampled each, if known), rollout i*G+j answering prompt i."""
    if len(responses) != len(records) * group_size:
        raise RuntimeError(f"vLLM returned {len(responses)} responses for {len(records)} prompts x {group_size}")
    lengths = torch.tensor([len(r) for r in responses])
    prompts = per_rollout(prompt_ids, group_size)
    prompt = padded(prompts, tokenizer.pad_token_id, left=True, dtype=torch.long)  # [N, P]
    prompt_mask = padded([[1] * len(ids) for ids in prompts], 0, left=True, dtype=torch.long)
    response_ids = padded(responses, tokenizer.pad_token_id, left=False, dtype=torch.long)  # [N, T]
    T = response_ids.shape[1]
    response_mask = torch.arange(T) < lengths[:, None]  # vLLM stops at the first EOS and keeps it
    truncated = ~torch.isin(response_ids, torch.tensor(eos_ids)).logical_and(response_mask).any(-1)
    return RolloutBatch(
        sequences=torch.cat([prompt, response_ids], 1).to(device),
        attention_mask=torch.cat([prompt_mask, response_mask.long()], 1).to(device),
        response_mask=response_mask.to(device),
        prompt_len=prompt.shape[1],
        groups=torch.arange(len(records), device=device).repeat_interleave(group_size),
        prompts=per_rollout(prompt_texts, group_size),
        responses=tokenizer.batch_decode(responses, skip_special_tokens=True),
        ground_truths=per_rollout([r["ground_truth"] for r in records], group_size),
        truncated=truncated.to(device),
        sampling_logprobs=padded(logprobs, 0.0, left=False, dtype=torch.float32).to(device),
        versions=None if versions is None else torch.tensor(versions, device=device),
    )
