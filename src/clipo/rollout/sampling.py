"""How an engine samples: the settings every rollout engine understands, whatever its backend."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of one `RolloutEngine.generate` call.

    Attributes:
        max_new_tokens: generation budget per response.
        temperature: softmax temperature; 0.0 decodes greedily.
        top_p: nucleus sampling mass (1.0: off).
        top_k: top-k filtering (0: off).
        seed: seed of this call's draws (None: continue the global random stream).
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if problems := self.problems(self.max_new_tokens, self.temperature, self.top_p, self.top_k):
            raise ValueError("; ".join(problems))

    @staticmethod
    def problems(max_new_tokens: int, temperature: float, top_p: float, top_k: int = 0, prefix: str = "",
                 training: bool = False) -> list[str]:
        """What is wrong with these settings (the config check calls this before any model loads), each named
        `<prefix><setting>=<value>`; `training`: they sample the rollouts that are trained on, where greedy
        decoding gives every rollout of a prompt the same response."""
        problems = []
        if not _is_int(max_new_tokens) or max_new_tokens < 1:
            problems.append(f"{prefix}max_new_tokens={max_new_tokens} must be a token count >= 1")
        if not _is_number(temperature) or temperature < 0:
            problems.append(f"{prefix}temperature={temperature} must be a number >= 0 (0: greedy)")
        elif training and temperature == 0:
            problems.append(f"{prefix}temperature=0 samples greedily: the rollouts of a prompt are then identical, "
                            "every group has zero reward variance, every advantage is 0 and the policy never "
                            "learns; use a temperature > 0 (1.0 is usual, the paper samples at 1.0)")
        if not _is_number(top_p) or not 0 < top_p <= 1:
            problems.append(f"{prefix}top_p={top_p} must lie in (0, 1] (1: off; 0 would keep no token)")
        if not _is_int(top_k) or top_k < 0:
            problems.append(f"{prefix}top_k={top_k} must be an integer >= 0 (0: off)")
        return problems

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def logprob_temperature(self) -> float:
        """The temperature the training forward divides logits by (1.0 for greedy decoding)."""
        return self.temperature or 1.0


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
