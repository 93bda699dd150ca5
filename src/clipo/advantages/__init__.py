"""The `advantage=` options, one file each: rewards [N] and group ids [N] (and, for some, response
lengths and reward components) -> advantages [N].

Every option module is imported here so that its registration (ADVANTAGES) never depends on
what else was imported first.
"""

from clipo.advantages.dr_grpo import DrGRPOAdvantage, dr_grpo_advantages
from clipo.advantages.gdpo import GDPOAdvantage, gdpo_advantages
from clipo.advantages.gpg import GPGAdvantage, gpg_advantages
from clipo.advantages.grpo import GRPOAdvantage, grpo_advantages
from clipo.advantages.grpo_passk import GRPOPassKAdvantage, grpo_passk_advantages
from clipo.advantages.opo import OPOAdvantage, opo_advantages
from clipo.advantages.reinforce_pp import ReinforcePPAdvantage, reinforce_pp_advantages
from clipo.advantages.rloo import RLOOAdvantage, rloo_advantages

__all__ = [
    "DrGRPOAdvantage",
    "GDPOAdvantage",
    "GPGAdvantage",
    "GRPOAdvantage",
    "GRPOPassKAdvantage",
    "OPOAdvantage",
    "RLOOAdvantage",
    "ReinforcePPAdvantage",
    "dr_grpo_advantages",
    "gdpo_advantages",
    "gpg_advantages",
    "grpo_advantages",
    "grpo_passk_advantages",
    "opo_advantages",
    "reinforce_pp_advantages",
    "rloo_advantages",
]
