"""verl's `core_algos` (the installed wheel's own file, unmodified), importable without verl's dependencies.

verl is installed with `pip install verl==0.9.1 --no-deps` (scripts/setup.sh --dev): its other
requirements (ray, vLLM/SGLang, tensordict, ...) would pull a second torch. `import verl` itself
then fails, because `verl/__init__.py` imports `verl.protocol`, which imports ray. `core_algos`
needs none of that at run time: this loader skips `verl/__init__.py` and lets the import-time-only
references to ray, tensordict, codetiming and orjson (where they are not installed) resolve to inert
stand-ins that raise if anything calls them afterwards, so a reference function that touched them
fails loudly instead of computing. Nothing of verl's code is copied or changed.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from functools import cache

import pytest

VERL_VERSION = "0.9.1"
IMPORT_ONLY = ("ray", "tensordict", "tensordict.tensorclass", "codetiming", "orjson")
_armed = False  # after the import: any use of a stand-in is an error


class _StandIn:
    def __init__(self, *args, **kwargs) -> None:
        if _armed:
            raise RuntimeError("a verl reference function used a module it was imported without (ray, tensordict, ...)")

    def __call__(self, *args, **kwargs):  # decorators applied at import time return the function
        if _armed:
            raise RuntimeError("a verl reference function used a module it was imported without (ray, tensordict, ...)")
        return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else _StandIn()

    def __class_getitem__(cls, item):  # annotations such as list[ray.ObjectRef]
        return cls


class _StandInModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StandIn


@cache
def core_algos() -> types.ModuleType:
    """`verl.trainer.ppo.core_algos` of the installed wheel; skips the test when verl is not installed."""
    global _armed
    spec = importlib.util.find_spec("verl")
    if spec is None:
        pytest.skip(f"verl is not installed: pip install verl=={VERL_VERSION} --no-deps (scripts/setup.sh --dev)")
    missing = [name for name in IMPORT_ONLY if importlib.util.find_spec(name.split(".")[0]) is None]
    added = [name for name in missing if name not in sys.modules]
    for name in added:
        module = _StandInModule(name)
        module.__path__ = []
        sys.modules[name] = module
    package = types.ModuleType("verl")  # the package without its __init__ (which imports ray)
    package.__path__, package.__spec__ = list(spec.submodule_search_locations), spec
    sys.modules.setdefault("verl", package)
    try:
        import verl.trainer.ppo.core_algos as module
    finally:
        for name in added:  # the stand-ins must not make ray or tensordict look installed to other code
            sys.modules.pop(name, None)
    _armed = True
    return module


def actor_config(**fields):
    """verl's `ActorConfig` (what its policy losses read) with the settings given, e.g. clip_ratio_low."""
    core_algos()
    from verl.workers.config import ActorConfig, PolicyLossConfig

    policy_loss = PolicyLossConfig(**fields.pop("policy_loss", {}))
    return ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, policy_loss=policy_loss, **fields)


def algo_config(**fields):
    """verl's `AlgoConfig` (what its advantage estimators read)."""
    core_algos()
    from verl.trainer.config import AlgoConfig

    return AlgoConfig(**fields)
