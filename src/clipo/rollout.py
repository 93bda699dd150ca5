"""Generation and the batch of rollouts it returns, and the log-prob forward pass.

Shapes: `B` prompts, `G` rollouts a prompt, `N = B * G`, `P` padded prompt length,
`T` response length (the longest response in the batch), `D` hidden size, `V` vocab.

Representations for CLIPO come from generation itself, with no extra forward pass:
a forward hook on the chosen layer keeps, at each decoding step, the hidden state
that predicted the next response token. The training forward (`forward_responses`)
returns the hidden states at the same positions, so both paths pool the same thing.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from transformers import GenerationConfig


@dataclass
class RolloutBatch:
    sequences: torch.Tensor  # [N, P+T] left-padded prompt, then the response (padded after EOS)
    attention_mask: torch.Tensor  # [N, P+T] 1 on prompt and response tokens (EOS included)
    response_mask: torch.Tensor  # [N, T] bool, response tokens up to and including EOS
    prompt_len: int  # P
    groups: torch.Tensor  # [N] prompt index within the batch: rollouts i*G..i*G+G-1 share one
    responses: list[str]  # N decoded responses
    ground_truths: list[str]  # N, repeated per group
    data_sources: list[str]  # N
    truncated: torch.Tensor  # [N] bool, no EOS within max_new_tokens
    hidden: torch.Tensor | None = None  # [N, T, D] captured layer at the positions predicting each token
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def response_ids(self) -> torch.Tensor:  # [N, T]
        return self.sequences[:, self.prompt_len :]

    @property
    def response_lengths(self) -> torch.Tensor:  # [N]
        return self.response_mask.sum(-1)

    def select(self, index: torch.Tensor) -> "RolloutBatch":
        """The rollouts at `index` (e.g. a mini-batch), sharing the same padding."""
        pick = index.tolist()
        return RolloutBatch(
            sequences=self.sequences[index],
            attention_mask=self.attention_mask[index],
            response_mask=self.response_mask[index],
            prompt_len=self.prompt_len,
            groups=self.groups[index],
            responses=[self.responses[i] for i in pick],
            ground_truths=[self.ground_truths[i] for i in pick],
            data_sources=[self.data_sources[i] for i in pick],
            truncated=self.truncated[index],
            hidden=None if self.hidden is None else self.hidden[index],
        )


def hidden_layer_module(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    """The submodule whose output is `hidden_states[layer]` of a HF decoder (L layers, L+1 states).

    0 is the embedding output, k in 1..L-1 decoder layer k's output, L (or -1) the
    output of the final norm.
    """
    decoder = model.get_decoder()
    num_layers = len(decoder.layers)
    index = layer % (num_layers + 1)
    if index == num_layers:
        return decoder.norm
    if index == 0:
        return decoder.embed_tokens
    return decoder.layers[index - 1]


@contextmanager
def capture_predicting_states(module: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect, per generation step, the last position's output of `module`: [N, 1, D] each.

    The prefill call contributes the last prompt position (which predicts response token
    0); each decoding step contributes the state that predicts the following token.
    """
    states: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        states.append(hidden[:, -1:].detach())

    handle = module.register_forward_hook(hook)
    try:
        yield states
    finally:
        handle.remove()


def response_mask_from_ids(response_ids: torch.Tensor, eos_token_ids: list[int]) -> torch.Tensor:
    """[N, T] bool: True up to and including the first EOS of each row (all True if none)."""
    is_eos = torch.isin(response_ids, torch.tensor(eos_token_ids, device=response_ids.device))
    ended_before = (is_eos.cumsum(-1) - is_eos.long()) > 0
    return ~ended_before


@torch.no_grad()
def generate_rollouts(
    model: torch.nn.Module,
    tokenizer: Any,
    records: list[dict],
    group_size: int,
    generation: GenerationConfig,
    capture_layer: int | None = None,
) -> RolloutBatch:
    """Sample `group_size` responses for each prompt record (HF `generate`, KV cache, left padding).

    Args:
        records: B prompt records with `messages`, `ground_truth`, `data_source`.
        generation: sampling settings (`max_new_tokens`, `temperature`, `top_p`, ...).
        capture_layer: hidden layer to keep for CLIPO (None: keep nothing).
    """
    prompts = [
        tokenizer.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=False) for r in records
    ]
    device = next(model.parameters()).device
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    input_ids = encoded.input_ids.repeat_interleave(group_size, dim=0)  # [N, P]
    prompt_mask = encoded.attention_mask.repeat_interleave(group_size, dim=0)

    was_training = model.training
    model.eval()  # no dropout while sampling
    module = hidden_layer_module(model, capture_layer) if capture_layer is not None else None
    try:
        if module is None:
            sequences = model.generate(input_ids=input_ids, attention_mask=prompt_mask, generation_config=generation)
            states = []
        else:
            with capture_predicting_states(module) as states:
                sequences = model.generate(input_ids=input_ids, attention_mask=prompt_mask, generation_config=generation)
    finally:
        model.train(was_training)

    prompt_len = input_ids.shape[1]
    response_ids = sequences[:, prompt_len:]
    eos_ids = generation.eos_token_id if isinstance(generation.eos_token_id, list) else [generation.eos_token_id]
    response_mask = response_mask_from_ids(response_ids, eos_ids)
    truncated = ~torch.isin(response_ids, torch.tensor(eos_ids, device=device)).any(-1)
    hidden = torch.cat(states, dim=1)[:, : response_ids.shape[1]] if states else None  # [N, T, D]
    return RolloutBatch(
        sequences=sequences,
        attention_mask=torch.cat([prompt_mask, response_mask.long()], dim=1),
        response_mask=response_mask,
        prompt_len=prompt_len,
        groups=torch.arange(len(records), device=device).repeat_interleave(group_size),
        responses=tokenizer.batch_decode(response_ids.masked_fill(~response_mask, tokenizer.pad_token_id), skip_special_tokens=True),
        ground_truths=[r["ground_truth"] for r in records for _ in range(group_size)],
        data_sources=[r.get("data_source", "") for r in records for _ in range(group_size)],
        truncated=truncated,
        hidden=hidden,
    )


@dataclass
class ForwardOutput:
    logprobs: torch.Tensor  # [n, T] log-prob of each response token
    entropy: torch.Tensor | None  # [n, T] (no grad), when asked for
    hidden: torch.Tensor | None  # [n, T, D] chosen layer at the predicting positions, when asked for


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
        hidden = out.hidden_states[hidden_layer][:, P - 1 : P + T - 1]
    return ForwardOutput(logprobs=logprobs, entropy=entropy, hidden=hidden)


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
    return RolloutBatch(
        sequences=torch.cat([parts(b, b.sequences, pad_token_id) for b in batches]),
        attention_mask=torch.cat([parts(b, b.attention_mask, 0) for b in batches]),
        response_mask=torch.cat([pad_time(b.response_mask, 0, T - b.response_mask.shape[1], False) for b in batches]),
        prompt_len=P,
        groups=torch.cat([b.groups + offset for b, offset in zip(batches, offsets)]),
        responses=[r for b in batches for r in b.responses],
        ground_truths=[g for b in batches for g in b.ground_truths],
        data_sources=[s for b in batches for s in b.data_sources],
        truncated=torch.cat([b.truncated for b in batches]),
        hidden=torch.cat([pad_time(b.hidden, 0, T - b.hidden.shape[1], 0.0) for b in batches]) if with_hidden else None,
    )
