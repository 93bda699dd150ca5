"""How CLIPO's contrastive term enters training, decided once from the config.

`ContrastiveMode.resolve(loss_name, mode)` is the one place that reads `loss=` and
`contrastive.mode`; config checks, builders and the objective use its answer:

    OFF     loss=none: plain RLVR, no head, no pooling, no hidden states captured
    REWARD  the paper's: detached representations, bonus added to correct rollouts' rewards,
            the head (and a learned pooler) trained on their own loss
    LOSS    coef * contrastive loss added to the policy loss (its gradient reaches the policy)
"""

from __future__ import annotations

from enum import Enum


class ContrastiveMode(str, Enum):
    OFF = "off"
    REWARD = "reward"
    LOSS = "loss"

    @classmethod
    def configurable(cls) -> tuple[str, ...]:
        """The values `contrastive.mode` accepts (besides null)."""
        return (cls.REWARD.value, cls.LOSS.value)

    @classmethod
    def resolve(cls, loss_name: str, mode: str | None) -> ContrastiveMode:
        """OFF for `loss=none`, else the configured mode (REWARD when null).

        Raises:
            ValueError: an unknown mode, or a mode set together with `loss=none`.
        """
        if mode is not None and mode not in cls.configurable():
            raise ValueError(f"contrastive.mode={mode!r} is unknown; choose reward, loss, or null")
        if loss_name == "none":
            if mode is not None:
                raise ValueError(
                    f"contrastive.mode={mode} needs a contrastive loss, but loss=none (plain RLVR) is selected; "
                    "pick a loss (e.g. loss=infonce) or drop contrastive.mode"
                )
            return cls.OFF
        return cls(mode or cls.REWARD.value)
