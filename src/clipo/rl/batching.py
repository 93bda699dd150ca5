"""How a step's rollouts are cut for the update: epochs of mini-batches of micro-batches.

`ppo.mini_batch_size` counts rollouts per optimizer update over all processes (verl's
`ppo_mini_batch_size` x rollout.n); `ppo.micro_batch_size` counts rollouts per forward pass in one
process, or `ppo.max_tokens_per_micro_batch` packs them by tokens instead, counted by the training
forward plan's cost. The config check and the updater both use `batch_sizes`, so the rule lives
here once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipo.distributed import max_over_ranks
from clipo.rollout.batch import RolloutBatch
from clipo.rollout.forward import TrainingForward
from clipo.rollout.packing import pack_by_tokens


def batch_sizes(n: int, world_size: int, mini_batch_size: int | None, micro_batch_size: int | None) -> tuple[int, int]:
    """(mini, micro): one process's rollouts per optimizer update and per forward pass, from its `n`."""
    mini = mini_batch_size // world_size if mini_batch_size else n  # this process's share of an update
    return mini, min(micro_batch_size or mini, mini)


@dataclass(frozen=True)
class MicroBatch:
    """One forward pass of the update or of a collector pass, as every rank runs it."""

    index: torch.Tensor  # [n] rows of the step's rollouts
    head_chunks: int  # LM-head chunks: the most any rank needs for this pass
    stand_in: bool = False  # a repeated rollout whose results are dropped: another rank makes more passes


@dataclass(frozen=True)
class UpdateBatching:
    """`ppo.epochs`, `ppo.mini_batch_size`, `ppo.micro_batch_size` and the token budget, with the training
    forward's plan (`TrainingForward`: its layout's cost packs the micro-batches) and whether a micro-batch
    must hold whole groups (a loss over a group's rollouts, taken per forward pass)."""

    forward: TrainingForward
    epochs: int = 1
    mini_batch_size: int | None = None
    micro_batch_size: int | None = None
    token_budget: int | None = None  # None: `micro_batch_size` rollouts a pass
    grow_budget: bool = False  # `ppo.max_tokens_per_micro_batch=auto`: raised to the largest unit
    whole_groups: bool = False

    def sizes(self, n: int, world_size: int) -> tuple[int, int]:
        return batch_sizes(n, world_size, self.mini_batch_size, self.micro_batch_size)

    def reuses_batch(self, global_rollouts: int) -> bool:
        """Whether a step's rollouts get several optimizer updates (then pi_old needs a pass of its own)."""
        return self.epochs > 1 or bool(self.mini_batch_size) and self.mini_batch_size < global_rollouts

    def micro_batches(self, rollouts: RolloutBatch, index: torch.Tensor, micro: int) -> list[MicroBatch]:
        """The forward passes over `index`: slices of `micro` rollouts, or packed by the token budget.

        Every rank runs as many passes, each with as many LM-head chunks (each backward synchronises
        gradients under DDP; ZeRO-3 gathers parameters on every module call): a rank with fewer passes
        runs stand-ins, one repeated rollout whose results are dropped."""
        parts = list(index.split(micro)) if self.token_budget is None else self._packed(rollouts, index)
        count = int(max_over_ranks(torch.tensor(len(parts), device=index.device)))
        chunks = [self.forward.head_chunks(int(rollouts.response_mask[part].sum())) for part in parts]
        chunks = max_over_ranks(torch.tensor(chunks + [1] * (count - len(parts)), device=index.device)).tolist()
        passes = parts + [index[:1]] * (count - len(parts))
        return [MicroBatch(part, int(c), stand_in=k >= len(parts)) for k, (part, c) in enumerate(zip(passes, chunks))]

    def _packed(self, rollouts: RolloutBatch, index: torch.Tensor) -> list[torch.Tensor]:
        """`index` packed into micro-batches of at most `token_budget` tokens as the plan computes them."""
        prompts = rollouts.attention_mask[index, : rollouts.prompt_len].sum(-1).tolist()  # [n] real prompt tokens
        responses = rollouts.response_mask[index].sum(-1).tolist()
        groups = rollouts.groups[index].tolist()

        def cost(rows: list[int]) -> int:
            return self.forward.tokens([prompts[j] for j in rows], [responses[j] for j in rows],
                                       [groups[j] for j in rows])

        lengths = rollouts.attention_mask[index].sum(-1)
        packed = pack_by_tokens(lengths, self.token_budget, cost, rollouts.groups[index], self.whole_groups,
                                self.grow_budget)
        return [index[part.to(index.device)] for part in packed]


# tokens per forward/backward as computed (see ppo.max_tokens_per_micro_batch). CPU: SmolLM2-135M, fp32, 2 AMD EPYC
# cores with AVX-512 BF16, 32 padded rollouts of <= 256 tokens updated in 59.4 s and 7.0 GB at 2048 against 68.3 s
# and 12.3 GB at 16 rollouts a pass (benchmarks/RESULTS.md); CUDA: verl's ppo_max_token_len_per_gpu
AUTO_TOKENS = {"cpu": 2048, "cuda": 16384}
