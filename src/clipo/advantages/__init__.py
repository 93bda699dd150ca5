"""The `advantage=` options, one file each: rewards [N] and group ids [N] -> advantages [N].

Every option module is imported here so that its registration (ADVANTAGES) never depends on
what else was imported first.
"""

from clipo.advantages.dr_grpo import DrGRPOAdvantage, dr_grpo_advantages
from clipo.advantages.grpo import GRPOAdvantage, grpo_advantages
from clipo.advantages.reinforce_pp import ReinforcePPAdvantage, reinforce_pp_advantages
from clipo.advantages.rloo import RLOOAdvantage, rloo_advantages

__all__ = [
    "DrGRPOAdvantage",
    "GRPOAdvantage",
    "RLOOAdvantage",
    "ReinforcePPAdvantage",
    "dr_grpo_advantages",
    "grpo_advantages",
    "reinforce_pp_advantages",
    "rloo_advantages",
]
