"""Name -> component registries.

Each swappable part (advantage estimator, policy loss, verifier, pooler, head,
contrastive loss, rollout engine) has one `Registry`; `clipo.interfaces` states what each
part's options are called with. Options register themselves with a
decorator; configs select them by `name`. A registry asked for its names or an entry first
imports every option module (`register_components`, the one place that does), so no caller
can find it incomplete:

    @ADVANTAGES.register("grpo")
    class GRPOAdvantage: ...

    ADVANTAGES.build({"name": "grpo", "eps": 1e-6})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


class Registry:
    """A named collection of components of one kind (e.g. "loss")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        def add(obj: Any) -> Any:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered to {self._entries[name]!r}")
            self._entries[name] = obj
            return obj

        return add

    def names(self) -> list[str]:
        register_components()
        return sorted(self._entries)

    def get(self, name: str) -> Any:
        register_components()
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return self._entries[name]

    def build(self, cfg: Mapping[str, Any], **extra: Any) -> Any:
        """Instantiate `cfg["name"]` with the other keys (and `extra`) as keyword arguments."""
        kwargs = {k: v for k, v in dict(cfg).items() if k != "name"}
        return self.get(cfg["name"])(**kwargs, **extra)

    def __contains__(self, name: str) -> bool:
        register_components()
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


ADVANTAGES = Registry("advantage estimator")
ALGORITHMS = Registry("algorithm")
VERIFIERS = Registry("verifier")
POOLERS = Registry("pooler")
HEADS = Registry("head")
LOSSES = Registry("contrastive loss")
ENGINES = Registry("rollout engine")


def register_components() -> None:
    """Import every option module so that each registry is complete (imports are cached: later calls are free)."""
    import clipo.advantages  # noqa: F401
    import clipo.algorithms  # noqa: F401
    import clipo.contrastive  # noqa: F401
    import clipo.rollout  # noqa: F401
    import clipo.verifiers  # noqa: F401
