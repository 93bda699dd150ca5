"""Hydra entry point: `python src/clipo/train.py loss=supcon pooler=mean`.

`train(cfg)` is a plain function (tests call it); `main()` only wraps it with Hydra.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig

from clipo.builders import build_datamodule, build_module, build_trainer
from clipo.callbacks import RunSummary, format_summary
from clipo.config import ConfigError, validate_config
from clipo.models import is_adapter, save_merged

log = logging.getLogger(__name__)
# clipo checkpoints after the policy update on purpose (the state a resumed run continues from)
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
# the frozen reference model stays in eval mode on purpose
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate the config, build every part, fit, export; returns (metrics, objects)."""
    validate_config(cfg)  # before any model or data is loaded
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    trainer = build_trainer(cfg)
    output_dir = Path(cfg.paths.output_dir)

    validate = cfg.data.get("val") and not cfg.trainer.get("fast_dev_run")
    val_before = _validate(trainer, module, datamodule) if validate and cfg.validation.before_training else {}
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    val_after = _validate(trainer, module, datamodule) if validate else {}

    merge = bool(cfg.get("export", {}).get("merge", False))
    export_dir = export_policy(module, output_dir / "policy", merge) if trainer.is_global_zero else None
    summary = next((c for c in trainer.callbacks if isinstance(c, RunSummary)), None)
    checkpoint = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else None
    if summary is not None and trainer.is_global_zero:
        print(format_summary(summary, val_before, val_after, str(output_dir), checkpoint, str(export_dir)))
    for verifier in {id(v): v for v in [module.verifier, *module.val_verifiers.values()]}.values():
        verifier.close()
    metrics |= val_after
    metrics |= {k.replace("val/", "val_before/", 1): v for k, v in val_before.items()}
    if trainer.is_global_zero:
        history = summary.history if summary is not None else []
        write_json_atomic(output_dir / "summary.json", {"metrics": metrics, "history": history})
    return metrics, {"trainer": trainer, "module": module, "datamodule": datamodule, "summary": summary}


def _validate(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule) -> dict[str, float]:
    results = trainer.validate(module, datamodule=datamodule, verbose=False)
    return {k: float(v) for result in results for k, v in result.items()}


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=float))
    os.replace(tmp, path)


def export_policy(module: L.LightningModule, target: Path, merge: bool = False) -> Path:
    """The final policy as a `save_pretrained` folder (a LoRA adapter in PEFT's format, plus a merged
    model in `policy_merged/` when `merge`), the contrastive head beside it."""
    target.mkdir(parents=True, exist_ok=True)
    module.policy.save_pretrained(target)
    module.tokenizer.save_pretrained(target)
    if merge and is_adapter(module.policy):
        save_merged(module.policy, module.tokenizer, target.parent / f"{target.name}_merged")
    if module.contrastive.head is not None:
        torch.save(module.contrastive.state_dict(), target.parent / "contrastive_head.pt")
    return target


@hydra.main(version_base="1.3", config_path="../../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics, _ = train(cfg)
    except ConfigError as error:
        log.error(str(error))
        raise SystemExit(2) from None
    return metrics.get("train/reward")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
