"""Builders turn configs into the right objects (no model is loaded here)."""

import importlib.util

import pytest
from lightning.pytorch.strategies import DDPStrategy, Strategy

from clipo.builders import build_strategy
from tests.conftest import compose_config

DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


@pytest.mark.parametrize(
    "name,stage,offload",
    [("deepspeed_zero2", 2, False), ("deepspeed_zero2_offload", 2, True),
     ("deepspeed_zero3", 3, False), ("deepspeed_zero3_offload", 3, True)],
)
@pytest.mark.skipif(not DEEPSPEED, reason="deepspeed is not installed (scripts/setup.sh --dev installs it)")
def test_deepspeed_strategies_build(name, stage, offload, tmp_path):
    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = build_strategy(compose_config([f"strategy={name}"], output_dir=tmp_path))
    assert isinstance(strategy, DeepSpeedStrategy)
    zero = strategy.config["zero_optimization"]
    assert zero["stage"] == stage
    assert ("offload_optimizer" in zero) == offload
    assert ("offload_param" in zero) == (offload and stage == 3)


def test_ddp_and_auto_strategies_build(tmp_path):
    ddp = build_strategy(compose_config(["strategy=ddp"], output_dir=tmp_path))
    assert isinstance(ddp, DDPStrategy) and isinstance(ddp, Strategy)
    assert build_strategy(compose_config(["strategy=auto"], output_dir=tmp_path)) == "auto"
