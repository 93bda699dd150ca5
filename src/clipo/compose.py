"""Compose the Hydra config without the command line (tests, notebooks, benchmarks)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, open_dict

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def compose(overrides: list[str] | None = None, output_dir: Path | None = None, config_name: str = "train") -> DictConfig:
    """Compose `configs/<config_name>.yaml` without the command line (tests, notebooks, benchmarks),
    with the Hydra runtime set as in a real run, so `${hydra:...}` interpolations resolve."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides or [], return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
            cfg.paths.output_dir = str(output_dir)
    HydraConfig().set_config(cfg)
    return cfg
