"""The `hf` rollout engine (`HFEngine`): transformers `generate` with the KV cache and left padding.

Shapes as in `clipo.rollout.batch`. Representations for CLIPO come from generation itself,
with no extra forward pass: a forward hook on the chosen layer keeps, at each decoding step,
the hidden state at the response token just fed back (the prefill's state, at the last prompt
position, is dropped, as in the official code's SGLang patch). Row t of `RolloutBatch.hidden` is
the state at response token t; the training forward (`clipo.rollout.forward.forward_responses`)
returns the states at the same positions, so both paths pool the same thing
(`RolloutBatch.hidden_mask`).
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Any, Iterator

import torch
from transformers import GenerationConfig

from clipo.registry import ENGINES
from clipo.rollout.batch import RolloutBatch, pad_time, per_rollout, response_mask_from_ids
from clipo.rollout.prompts import prompt_texts
from clipo.rollout.sampling import Sampling


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
    """Collect, per decoding step, the output of `module` at the token fed in: [N, 1, D] each.

    The first call (the prefill over the prompt) is skipped; decoding step k feeds response
    token k-1, so the list ends up holding the states at response tokens 0..T-2 (the T-th
    token is never fed back).
    """
    states: list[torch.Tensor] = []
    calls = [0]

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        calls[0] += 1
        if calls[0] == 1:
            return  # the prefill: the last prompt position is not a response token's state
        hidden = output[0] if isinstance(output, tuple) else output
        states.append(hidden[:, -1:].detach())

    handle = module.register_forward_hook(hook)
    try:
        yield states
    finally:
        handle.remove()


@torch.no_grad()
def generate_rollouts(
    model: torch.nn.Module,
    tokenizer: Any,
    records: list[dict],
    group_size: int,
    generation: GenerationConfig,
    hidden_layer: int | None = None,
) -> RolloutBatch:
    """Sample `group_size` responses for each prompt record (HF `generate`, KV cache, left padding).

    Args:
        records: B prompt records with `messages`, `ground_truth`, `data_source`.
        generation: sampling settings (`max_new_tokens`, `temperature`, `top_p`, ...).
        hidden_layer: hidden layer to keep for CLIPO (None: keep nothing).
    """
    prompts = prompt_texts(tokenizer, records)
    device = next(model.parameters()).device
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    input_ids = encoded.input_ids.repeat_interleave(group_size, dim=0)  # [N, P]
    prompt_mask = encoded.attention_mask.repeat_interleave(group_size, dim=0)

    module = hidden_layer_module(model, hidden_layer) if hidden_layer is not None else None
    sequences, states = _sample(model, input_ids, prompt_mask, generation, module)
    prompt_len = input_ids.shape[1]
    response_ids = sequences[:, prompt_len:]
    eos_ids = generation.eos_token_id if isinstance(generation.eos_token_id, list) else [generation.eos_token_id]
    response_mask = response_mask_from_ids(response_ids, eos_ids)
    truncated = ~torch.isin(response_ids, torch.tensor(eos_ids, device=device)).any(-1)
    hidden = None if module is None else _response_states(states, model, response_ids.shape)
    return RolloutBatch(
        sequences=sequences,
        attention_mask=torch.cat([prompt_mask, response_mask.long()], dim=1),
        response_mask=response_mask,
        prompt_len=prompt_len,
        groups=torch.arange(len(records), device=device).repeat_interleave(group_size),
        responses=tokenizer.batch_decode(response_ids.masked_fill(~response_mask, tokenizer.pad_token_id), skip_special_tokens=True),
        prompts=per_rollout(prompts, group_size),
        ground_truths=per_rollout([r["ground_truth"] for r in records], group_size),
        truncated=truncated,
        hidden=hidden,
    )


def _sample(model: torch.nn.Module, input_ids: torch.Tensor, prompt_mask: torch.Tensor, generation: GenerationConfig,
            module: torch.nn.Module | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(sequences [N, P+T], the states `module` gave at each decoding step, or [] when it is None)."""
    was_training = model.training
    model.eval()  # no dropout while sampling
    # no per-token sync between ranks (transformers turns it on for an FSDP module): the caller holds whole
    # weights for the phase, and ranks generate different numbers of times (validation batches, refills)
    generate = partial(model.generate, input_ids=input_ids, attention_mask=prompt_mask, generation_config=generation,
                       synced_gpus=False)
    try:
        if module is None:
            return generate(), []
        with capture_predicting_states(module) as states:
            return generate(), states
    finally:
        model.train(was_training)


def _response_states(states: list[torch.Tensor], model: torch.nn.Module, shape: torch.Size) -> torch.Tensor:
    """[N, T, D] the captured states at response tokens 0..T-2, then a zero row (no state: nothing decoded
    after the last token); `shape` is the responses' [N, T]."""
    n, T = shape
    parameter = next(model.parameters())
    empty = torch.zeros(n, 0, model.config.hidden_size, device=parameter.device, dtype=parameter.dtype)  # T == 1
    decoded = torch.cat(states, dim=1)[:, : T - 1] if states else empty
    return pad_time(decoded, 0, T - decoded.shape[1], 0.0)


def generation_config(sampling: Sampling, tokenizer: Any) -> GenerationConfig:
    """HF `GenerationConfig` of `sampling`: stops at the tokenizer's EOS, pads with its pad token, uses the KV cache."""
    stop = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, "use_cache": True}
    if sampling.greedy:
        return GenerationConfig(do_sample=False, max_new_tokens=sampling.max_new_tokens, **stop)
    return GenerationConfig(
        do_sample=True, max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
        top_p=sampling.top_p, top_k=sampling.top_k, **stop,
    )  # fmt: skip


@ENGINES.register("hf")
class HFEngine:
    """`rollout.engine=hf`: transformers `generate`, with the hidden-state hook for CLIPO (see `generate_rollouts`).

    It samples from the weights as they are held, never through autocast (which would re-cast every
    weight at every decoding step): from `sampler`, a bf16 copy of the policy cast once after each
    optimizer step (`clipo.run.working_copy`), when the precision plan samples in bf16 from a float32
    policy; else from the policy itself. Either way the weights are current, so `sync_weights` does nothing.
    """

    gives_hidden_states = True  # captured while sampling
    gives_sampling_logprobs = False  # it samples from the trainer's own distribution (or its bf16 copy's)

    def __init__(self, policy: torch.nn.Module, tokenizer: Any, sampler: torch.nn.Module | None = None) -> None:
        self.policy, self.tokenizer = (policy if sampler is None else sampler), tokenizer

    def generate(
        self, records: list[dict], group_size: int, sampling: Sampling, hidden_layer: int | None = None
    ) -> RolloutBatch:
        generation = generation_config(sampling, self.tokenizer)
        device = next(self.policy.parameters()).device
        with torch.autocast(device.type, enabled=False):  # a trainer's bf16-mixed context stops here
            if sampling.seed is None:
                return generate_rollouts(self.policy, self.tokenizer, records, group_size, generation, hidden_layer)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(sampling.seed)
                return generate_rollouts(self.policy, self.tokenizer, records, group_size, generation, hidden_layer)

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Nothing to do: this engine samples from the policy, or from a copy its optimizer keeps current."""
