"""The training forward over sampled rollouts, as one plan: log-probs, entropy and hidden states.

The builders decide the plan once from the model and the config (`plan_training_forward`) and hand
the same `TrainingForward` to the collector's no-grad passes and to the updater. It never inspects
the model again, and every rank follows it whatever its rollouts hold, so under ZeRO-3 and FSDP,
which gather parameters on every module call, every rank makes the same collective calls:

- `varlen` (flash-attention kernels): the rollouts back to back in one row, each with its own
  prompt, no padding and no mask computed (`clipo.rollout.varlen`); one decoder call;
- `shared_prompt` (SDPA / eager): each distinct prompt once into a KV cache that its responses
  read (`clipo.rollout.shared_prompt`); two decoder calls, always, even when nothing is shared;
- `padded` (a model that takes no cache, or gradient checkpointing, which drops it): one padded
  call over every rollout's own prompt (`clipo.rollout.padded`).

The columns padded in every rollout are cropped first. The LM head runs on the response tokens
only, in chunks recomputed in the backward pass (`clipo.rollout.logprobs`), as many chunks as the
micro-batch plan agreed on every rank; entropy comes from the same chunks. `tokens` is the plan's
cost of a set of rollouts, which micro-batches are packed by (`clipo.rl.batching`).

Shapes as in `clipo.rollout.batch`; `M` response tokens of the micro-batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F

from clipo.rollout.batch import RolloutBatch
from clipo.rollout.logprobs import DEFAULT_CHUNK_SIZE, token_logprobs
from clipo.rollout.padded import padded_states
from clipo.rollout.shared_prompt import shared_prompt_states, unsupported_reason
from clipo.rollout.varlen import uses_varlen_attention, varlen_states


class ForwardLayout(str, Enum):
    VARLEN = "varlen"
    SHARED_PROMPT = "shared_prompt"
    PADDED = "padded"


LAYOUT_SETTINGS = ("auto", *(layout.value for layout in ForwardLayout))  # `ppo.forward_layout`
STATES = {ForwardLayout.VARLEN: varlen_states, ForwardLayout.SHARED_PROMPT: shared_prompt_states,
          ForwardLayout.PADDED: padded_states}


@dataclass
class ForwardOutput:
    logprobs: torch.Tensor | None  # [n, T] log-prob of each response token (0 after the response's end), when asked for
    entropy: torch.Tensor | None  # [n, T] (no grad), when asked for (0 after the response's end)
    hidden: torch.Tensor | None  # [n, T, D] chosen layer at the response tokens (row t: token t), when asked for


@dataclass(frozen=True)
class TrainingForward:
    """The training forward's layout (and why), and the LM head's chunk size in positions."""

    layout: ForwardLayout
    reason: str = ""
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def __call__(
        self, model: torch.nn.Module, rollouts: RolloutBatch, temperature: float = 1.0, hidden_layer: int | None = None,
        with_entropy: bool = False, with_logprobs: bool = True, head_chunks: int | None = None,
    ) -> ForwardOutput:
        """Log-probs of the response tokens under `model` (with grad if enabled by the caller).

        Logits are divided by the sampling temperature, so the ratio compares the distributions that
        sampled. Position ids follow the left padding, as generation used them. Values outside
        `response_mask` are 0 (they are masked out everywhere downstream).

        Args:
            hidden_layer: also return this layer's states at the response tokens (CLIPO's), else None.
            with_logprobs: False skips the LM head (hidden states alone).
            head_chunks: LM-head chunks, as agreed over the ranks (`clipo.rl.batching.MicroBatch`);
                None: `self.head_chunks` of this micro-batch.
        """
        sequences, attention_mask, P, T = _cropped(rollouts)
        mask = rollouts.response_mask[:, :T].bool()  # [n, T]
        predicting, chosen = STATES[self.layout](model, sequences, attention_mask, mask, P, rollouts.groups,
                                                 hidden_layer)  # [M, D], [n, T, D] or None
        full_mask = rollouts.response_mask.bool()  # [n, T_batch]; True only within the first T columns
        logprobs = entropy = hidden = None
        if with_logprobs:
            chunks = self.head_chunks(int(mask.sum())) if head_chunks is None else head_chunks
            logprobs, entropy = token_logprobs(model.get_output_embeddings(), predicting, sequences[:, P:][mask],
                                               temperature, with_entropy, chunks)  # [M] each
            logprobs = logprobs.new_zeros(full_mask.shape).masked_scatter(full_mask, logprobs)
        if entropy is not None:
            entropy = entropy.new_zeros(full_mask.shape).masked_scatter(full_mask, entropy)
        if hidden_layer is not None:
            # CLIPO's states: at the response tokens' own positions (not the predicting ones), as generation
            # captures them; poolers read the rows in `rollouts.hidden_mask`
            hidden = F.pad(chosen, (0, 0, 0, full_mask.shape[1] - chosen.shape[1]))  # [n, T_batch, D]
        return ForwardOutput(logprobs=logprobs, entropy=entropy, hidden=hidden)

    def head_chunks(self, positions: int) -> int:
        """LM-head chunks for `positions` response tokens (at least 1)."""
        return max(1, math.ceil(positions / self.chunk_size))

    def tokens(self, prompts: list[int], responses: list[int], groups: list[int]) -> int:
        """Tokens this layout computes for rollouts with these real prompt and response lengths and group
        ids, run in one forward (the columns every rollout pads are cropped)."""
        if not prompts:
            return 0
        if self.layout is ForwardLayout.VARLEN:  # real tokens only, each rollout with its own prompt
            return sum(prompts) + sum(responses)
        if self.layout is ForwardLayout.SHARED_PROMPT:  # each group's prompt once, padded responses on top
            return len(set(groups)) * max(prompts) + len(responses) * max(responses)
        return len(prompts) * (max(prompts) + max(responses))


def plan_training_forward(model: torch.nn.Module, setting: str = "auto",
                          chunk_size: int = DEFAULT_CHUNK_SIZE) -> TrainingForward:
    """`ppo.forward_layout` for `model`: auto takes varlen on a flash-attention kernel, else the shared
    prompt where the model takes a KV cache, else padded; a layout the model cannot run is an error."""
    if setting not in LAYOUT_SETTINGS:
        raise ValueError(f"ppo.forward_layout={setting!r}: use one of {', '.join(LAYOUT_SETTINGS)}")
    if setting != "auto":
        no_cache = unsupported_reason(model) if setting == ForwardLayout.SHARED_PROMPT else None
        if no_cache is not None:
            raise ValueError(f"ppo.forward_layout=shared_prompt cannot run this model: {no_cache}; use auto or padded")
        return TrainingForward(ForwardLayout(setting), f"ppo.forward_layout={setting} was set explicitly", chunk_size)
    if uses_varlen_attention(model):
        return TrainingForward(ForwardLayout.VARLEN, "auto: a flash-attention kernel packs rollouts by position ids",
                               chunk_size)
    if (no_cache := unsupported_reason(model)) is None:
        return TrainingForward(ForwardLayout.SHARED_PROMPT, "auto: each group's prompt once, through the KV cache",
                               chunk_size)
    return TrainingForward(ForwardLayout.PADDED, f"auto: {no_cache}", chunk_size)


def forward_responses(
    model: torch.nn.Module, rollouts: RolloutBatch, temperature: float = 1.0, hidden_layer: int | None = None,
    with_entropy: bool = False, with_logprobs: bool = True,
) -> ForwardOutput:
    """The training forward of `model` over `rollouts` under the automatic plan, for one-off callers
    (notebooks, evaluation, tests); training runs the plan the builders made once."""
    return plan_training_forward(model)(model, rollouts, temperature, hidden_layer, with_entropy, with_logprobs)


def _cropped(rollouts: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(sequences, attention_mask [n, P'+T'], P', T') without the columns padded in every rollout:
    the prompt's common left padding and the response columns after the longest response."""
    mask, P = rollouts.attention_mask, rollouts.prompt_len
    start = int(mask[:, :P].any(0).long().argmax())  # first prompt column some rollout uses
    used = rollouts.response_mask.any(0).nonzero()
    T = int(used.max()) + 1 if used.numel() else 1
    return rollouts.sequences[:, start : P + T], mask[:, start : P + T], P - start, T
