"""The call signature of every swappable part, one `typing.Protocol` each.

Each part has a registry (`clipo.registry`) whose options satisfy the Protocol below;
`tests/test_interfaces.py` checks that every registered name builds and does. Shapes: `N`
rollouts, `T` response tokens, `D` hidden size, `E` embedding size.

    part                  registry      config              Protocol
    rollout engine        ENGINES       rollout.engine      RolloutEngine
    reward (verifier)     VERIFIERS     verifier=           Verifier
    advantage estimator   ADVANTAGES    advantage=          AdvantageEstimator
    policy loss           ALGORITHMS    algorithm=          PolicyLoss
    pooler                POOLERS       pooler=             Pooler
    head                  HEADS         head=               Head
    contrastive loss      LOSSES        loss=               ContrastiveLoss
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from clipo.algorithms.aggregation import StepNormalizer
from clipo.algorithms.inputs import LossInputs
from clipo.rollout.batch import RolloutBatch
from clipo.rollout.sampling import Sampling

__all__ = [
    "AdvantageEstimator",
    "ContrastiveLoss",
    "Head",
    "PolicyLoss",
    "Pooler",
    "RolloutEngine",
    "Sampling",
    "Verifier",
]


@runtime_checkable
class RolloutEngine(Protocol):
    """Samples `group_size` responses per prompt record.

    `records` are the datamodule's prompt dicts (`messages`, `ground_truth`, `data_source`, ...).
    An engine that can capture hidden states returns `hidden` [N, T, D] of `hidden_layer` (HF
    `hidden_states` index) at the positions predicting each response token; one that cannot
    returns `hidden=None`. The two flags say what it gives, so the builders plan the passes once.
    """

    gives_hidden_states: bool  # `hidden` of `hidden_layer` when asked for
    gives_sampling_logprobs: bool  # `sampling_logprobs`, its own log-probs of the sampled tokens

    def generate(
        self, records: list[dict], group_size: int, sampling: Sampling, hidden_layer: int | None = None
    ) -> RolloutBatch: ...

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Make the engine sample from `policy`'s current weights (a no-op when it samples from `policy` itself)."""
        ...


@runtime_checkable
class Verifier(Protocol):
    """Rewards: one score in [0, 1] per response (1 = correct); `stats` counters to log; `close` frees workers."""

    def __call__(self, responses: list[str], ground_truths: list[str]) -> list[float]: ...

    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...


@runtime_checkable
class AdvantageEstimator(Protocol):
    """rewards [N], integer group ids [N] -> advantages [N] float32 (groups may be unequal and unordered).
    `lengths` [N] (response tokens) and `components` [N, F] with `component_weights` [F] (each reward
    function's score and the shaping on top) are there for the estimators that use them."""

    def __call__(self, rewards: torch.Tensor, groups: torch.Tensor, lengths: torch.Tensor | None = None,
                 components: torch.Tensor | None = None,
                 component_weights: torch.Tensor | None = None) -> torch.Tensor: ...


@runtime_checkable
class PolicyLoss(Protocol):
    """One micro-batch's share of the step's policy-gradient loss, and detached metrics.

    logprobs, old_logprobs, mask, ref_logprobs, token_weights: [N, T]; advantages: [N]; `norm` holds the
    counts of the whole optimizer step. `uses_reference` says whether `ref_logprobs` are needed (a
    reference model is loaded only then). `token_weights` (importance weights against the sampling
    engine) multiply the per-token policy-gradient losses before aggregation; None: all 1.
    """

    uses_reference: bool
    needs_whole_groups: bool  # each forward must hold whole groups (the loss compares a group's rollouts)

    def loss(self, inputs: LossInputs, norm: StepNormalizer) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one micro-batch's `LossInputs` (what the updater calls); `__call__` takes the common tensors."""

    def __call__(
        self,
        logprobs: torch.Tensor,
        old_logprobs: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        norm: StepNormalizer,
        ref_logprobs: torch.Tensor | None = None,
        token_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


@runtime_checkable
class Pooler(Protocol):
    """hidden [N, T, D] and mask [N, T] -> pooled [N, D] float32 over masked tokens (zeros for an empty row)."""

    hidden_size: int

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Head(Protocol):
    """pooled [N, D] -> unit-norm embeddings [N, E]."""

    def __call__(self, pooled: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class ContrastiveLoss(Protocol):
    """embeddings [N, E], bool labels [N], group ids [N] -> (per-sample losses L_i [N], batch loss []).

    `sets(labels, groups)` gives the candidate/positive/negative masks the loss uses (for metrics).
    """

    def __call__(
        self, embeddings: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def sets(self, labels: torch.Tensor, groups: torch.Tensor): ...  # noqa: ANN201 (ContrastiveSets)
