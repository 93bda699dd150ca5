"""How an engine samples: the settings every rollout engine understands, whatever its backend."""

from __future__ import annotations

from dataclasses import dataclass


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
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"need 0 < top_p <= 1 and top_k >= 0, got top_p={self.top_p}, top_k={self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def logprob_temperature(self) -> float:
        """The temperature the training forward divides logits by (1.0 for greedy decoding)."""
        return self.temperature or 1.0
