"""The trained policy exported as a folder transformers (and evaluate.py) load, the head beside it."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from clipo.models import is_adapter, save_merged
from clipo.run.integrity import write_checksums


def export_policy(module: L.LightningModule, target: Path, merge: bool = False, state_dict: dict | None = None) -> Path:
    """The final policy as a `save_pretrained` folder (a LoRA adapter in PEFT's format, plus a merged
    model in `policy_merged/` when `merge`), the contrastive head beside it; `state_dict`: the policy's
    full weights when they are sharded (ZeRO-3, FSDP)."""
    target.mkdir(parents=True, exist_ok=True)
    module.policy.save_pretrained(target, state_dict=state_dict)
    module.tokenizer.save_pretrained(target)
    write_checksums(target)  # evaluate.py policy_path=... verifies the weights against it
    if merge and is_adapter(module.policy):
        save_merged(module.policy, module.tokenizer, target.parent / f"{target.name}_merged")
    if module.contrastive is not None:
        torch.save(module.contrastive.state_dict(), target.parent / "contrastive_head.pt")
    return target
