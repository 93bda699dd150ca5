"""Every `configs/experiment/*.yaml` composes, and so does every run its sweep would launch."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from clipo.config import validate_config
from clipo.data.common import bench_dir
from tests.conftest import CONFIG_DIR, compose_config

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
ABLATIONS = [name for name in EXPERIMENTS if name.startswith("ablate_")]
# The paper's ablations (DESIGN.md, issue 8): preset -> {swept key: values}.
EXPECTED_SWEEPS = {
    "ablate_loss": {"loss": ["infonce", "supcon", "soft_nn", "supcon_in", "triplet"]},
    "ablate_temperature": {"loss.temperature": ["0.02", "0.05", "0.2"]},
    "ablate_lambda": {"contrastive.lam": ["0.0", "0.1", "0.2", "0.5"]},
    "ablate_pooler": {"pooler": ["mean", "last", "max", "attention"]},
    "ablate_head": {"head": ["linear", "mlp", "fixed"]},
    "ablate_level": {"loss.level": ["group", "cross", "batch"]},
    "ablate_mode": {"contrastive.mode": ["reward", "loss"]},
    "ablate_algorithm": {"algorithm": ["grpo", "dapo", "gspo", "gmpo"], "loss": ["none", "infonce"]},
}


def sweep_values(params) -> dict[str, list[str]]:
    """hydra.sweeper.params expanded as the basic sweeper does (`a,b,c`, `choice(...)`, `range(...)`)."""
    parser = OverridesParser.create()
    overrides = parser.parse_overrides([f"{key}={value}" for key, value in params.items()])
    return {o.get_key_element(): list(o.sweep_string_iterator()) if o.is_sweep_override()
            else [o.get_value_element_as_str()] for o in overrides}


def test_every_paper_ablation_has_a_preset():
    assert sorted(EXPECTED_SWEEPS) == ABLATIONS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name):
    if not bench_dir().is_dir():  # the presets train and validate on the paper's parquet sets
        pytest.skip(f"clipo-bench data absent at {bench_dir()} (set CLIPO_BENCH_DIR)")
    cfg = compose_config([f"experiment={name}"])
    if cfg.strategy.name.startswith("deepspeed") and not torch.cuda.is_available():
        cfg = compose_config([f"experiment={name}", "strategy=ddp"])  # the GPU presets, checked here on CPU
    validate_config(cfg)  # registered names, mode vs loss, batch sizes, set verifiers: no model is loaded
    assert cfg.task_name == name, "each preset's runs go to logs/<name>/"
    text = (Path(CONFIG_DIR) / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_"), "an experiment sets top-level keys"


@pytest.mark.parametrize("name", ABLATIONS)
def test_ablation_sweeps_the_paper_grid_and_every_run_composes(name):
    cfg = compose_config([f"experiment={name}"])
    values = sweep_values(cfg.hydra.sweeper.params)
    assert {k: v for k, v in values.items() if k != "seed"} == EXPECTED_SWEEPS[name]
    assert values["seed"] == ["0"], "one seed by default; seed=0,1,2 on the command line sweeps more"
    assert cfg.task_name == name  # each ablation's runs go to logs/<name>/multiruns/
    for combo in itertools.product(*values.values()):
        overrides = [f"experiment={name}", *(f"{k}={v}" for k, v in zip(values, combo))]
        run_cfg = compose_config(overrides)
        validate_config(run_cfg)
        for key, value in zip(values, combo):
            node = OmegaConf.select(run_cfg, key)  # a group (its `name`) or a value
            assert str(node.name if isinstance(node, DictConfig) else node) == value
