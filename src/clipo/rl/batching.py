"""How a step's rollouts are cut for the update: epochs of mini-batches of micro-batches.

`ppo.mini_batch_size` counts rollouts per optimizer update over all processes (verl's
`ppo_mini_batch_size` x rollout.n); `ppo.micro_batch_size` counts rollouts per forward pass in one
process, or `ppo.max_tokens_per_micro_batch` packs them by tokens instead. The config check and the
updater both use `batch_sizes`, so the rule lives here once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipo.distributed import max_over_ranks
from clipo.rollout.batch import RolloutBatch
from clipo.rollout.packing import pack_by_tokens


def batch_sizes(n: int, world_size: int, mini_batch_size: int | None, micro_batch_size: int | None) -> tuple[int, int]:
    """(mini, micro): one process's rollouts per optimizer update and per forward pass, from its `n`."""
    mini = mini_batch_size // world_size if mini_batch_size else n  # this process's share of an update
    return mini, min(micro_batch_size or mini, mini)


@dataclass(frozen=True)
class UpdateBatching:
    """`ppo.epochs`, `ppo.mini_batch_size`, `ppo.micro_batch_size`, `ppo.max_tokens_per_micro_batch`,
    `ppo.padding_free` resolved for the policy (each forward packs its rollouts without padding,
    `clipo.rollout.forward`; off, as auto resolves on SDPA / eager), and whether those packed rows are
    varlen ones, where each rollout computes its own prompt (`clipo.rollout.varlen`)."""

    epochs: int = 1
    mini_batch_size: int | None = None
    micro_batch_size: int | None = None
    max_tokens_per_micro_batch: int | str | None = None  # "auto": `auto_token_budget`
    padding_free: bool = False
    varlen: bool = False

    def sizes(self, n: int, world_size: int) -> tuple[int, int]:
        return batch_sizes(n, world_size, self.mini_batch_size, self.micro_batch_size)

    def reuses_batch(self, global_rollouts: int) -> bool:
        """Whether a step's rollouts get several optimizer updates (then pi_old needs a pass of its own)."""
        return self.epochs > 1 or bool(self.mini_batch_size) and self.mini_batch_size < global_rollouts

    def micro_batches(self, rollouts: RolloutBatch, index: torch.Tensor, micro: int,
                      whole_groups: bool = False) -> list[torch.Tensor]:
        """The forward passes over `index`: slices of `micro` rollouts, or packed by the token budget
        (whole groups when the contrastive loss, taken per forward pass, compares a group's rollouts)."""
        if self.max_tokens_per_micro_batch is None:
            return list(index.split(micro))
        lengths = rollouts.attention_mask[index].sum(-1)  # [n] prompt + response tokens
        # a padding-free forward computes real tokens only: count those (each group's prompt once, or with
        # varlen rows every rollout's whole: a prompt length of 0 makes the cost the sum of the lengths)
        prompts = rollouts.attention_mask[index, : rollouts.prompt_len].sum(-1) if self.padding_free else None
        if prompts is not None and self.varlen:
            prompts = torch.zeros_like(prompts)
        groups = rollouts.groups[index]
        budget = self.max_tokens_per_micro_batch
        if budget == "auto":
            budget = auto_token_budget(index.device, rollouts, index, groups if whole_groups else None,
                                       self.padding_free, self.varlen)
        packed = pack_by_tokens(lengths, budget, groups, whole_groups, prompt_lengths=prompts)
        # every rank runs as many passes (each backward synchronises gradients under DDP)
        count = int(max_over_ranks(torch.tensor(len(packed), device=index.device)))
        if count > len(packed):
            packed = pack_by_tokens(lengths, budget, groups, whole_groups, min_batches=count, prompt_lengths=prompts)
        return [index[part.to(index.device)] for part in packed]


# tokens per forward/backward as computed (see ppo.max_tokens_per_micro_batch). CPU: SmolLM2-135M, fp32, 2 AMD EPYC
# cores with AVX-512 BF16, 32 padded rollouts of <= 256 tokens updated in 59.4 s and 7.0 GB at 2048 against 68.3 s
# and 12.3 GB at 16 rollouts a pass (benchmarks/RESULTS.md); CUDA: verl's ppo_max_token_len_per_gpu
AUTO_TOKENS = {"cpu": 2048, "cuda": 16384}


def auto_token_budget(device: torch.device, rollouts: RolloutBatch, index: torch.Tensor,
                      groups: torch.Tensor | None, real_tokens: bool = True, varlen: bool = False) -> int:
    """`ppo.max_tokens_per_micro_batch=auto`: `AUTO_TOKENS` of the device kind, raised to the largest
    unit that must share a forward (a rollout, or a whole group when `groups`: its prompt once with
    `real_tokens` (every rollout's own with `varlen`), else rows x its longest rollout)."""
    lengths = rollouts.attention_mask[index].sum(-1)  # [n]
    unit = int(lengths.max()) if len(lengths) else 1
    if groups is not None:
        responses = rollouts.response_mask[index].sum(-1)
        for g in groups.unique():
            members = groups == g
            if not real_tokens:
                unit = max(unit, int(members.sum() * lengths[members].max()))
                continue
            if varlen:  # every rollout with its own prompt
                unit = max(unit, int(lengths[members].sum()))
                continue
            unit = max(unit, int(lengths[members].max() + responses[members].sum() - responses[members].max()))
    return max(AUTO_TOKENS.get(device.type, AUTO_TOKENS["cuda"]), unit)
