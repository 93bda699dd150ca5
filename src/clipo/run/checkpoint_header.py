"""What a checkpoint says about itself, read before any model loads: its kind, steps, saved config.

Three kinds: a file (`.ckpt`, a zip archive from `torch.save`: DDP and one process; FSDP with
`save_distributed_checkpoint=false`), a DeepSpeed folder (`latest` names the tag folder whose
`mp_rank_00_model_states.pt` holds Lightning's state beside the module's weights) and an FSDP folder
(`meta.pt` holds Lightning's state, `.distcp` shards the tensors). Each is verified first
(`clipo.run.integrity`), then read with tensors memory-mapped, so the header costs no copy of the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clipo.config import ConfigError
from clipo.run.integrity import checkpoint_problem

OTHER_CHECKPOINT = "resume from another one (save_top_k=-1 keeps checkpoints/step_*.ckpt) or start fresh with ckpt_path=null"


def checkpoint_kind(path: Path) -> str:
    """`file`, `deepspeed` or `fsdp`; a folder of neither kind is a `ConfigError`."""
    if path.is_file():
        return "file"
    if (path / "latest").is_file():
        return "deepspeed"
    if (path / "meta.pt").is_file():
        return "fsdp"
    raise ConfigError(f"ckpt_path={path} is a folder but not a checkpoint: neither DeepSpeed's (no `latest` file) nor "
                      "FSDP's (no `meta.pt`); pass a checkpoint file or folder from <run>/checkpoints/, or "
                      "ckpt_path=last with hydra.run.dir=<run>")


def header_file(path: Path, kind: str) -> Path:
    """The file of a checkpoint that holds Lightning's state (global_step, callbacks, clipo's section)."""
    if kind == "deepspeed":  # rank 0's model states: ZeRO-1/2 write one file, ZeRO-3 one per rank
        folder = path / (path / "latest").read_text().strip()
        names = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")
        return next((folder / n for n in names if (folder / n).is_file()), folder / names[0])
    return path / "meta.pt" if kind == "fsdp" else path


def read_header(path: str | Path, verify: bool = True) -> dict:
    """The state of the checkpoint file or folder at `path` (tensors memory-mapped), verified first unless
    `verify` is false; a `ConfigError` saying why it cannot resume otherwise."""
    path = Path(path)
    kind = checkpoint_kind(path)
    if verify and (problem := checkpoint_problem(path)):
        raise ConfigError(f"ckpt_path={path} is damaged: {problem}; {OTHER_CHECKPOINT}")
    file = header_file(path, kind)
    if not file.is_file():
        raise ConfigError(f"ckpt_path={path} is incomplete: {file.relative_to(path)} is missing (a save that did not "
                          f"finish, or a partial copy); {OTHER_CHECKPOINT}")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - any failure to read means the same to the user
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"ckpt_path={path} cannot be read as a checkpoint ({type(error).__name__}: "
                          f"{first_line[:200]}): {file} is damaged or holds objects a clipo checkpoint never "
                          f"has; {OTHER_CHECKPOINT}") from None
    needed = ("clipo", "state_dict") if kind == "file" else ("clipo",)
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in needed):
        keys = sorted(checkpoint)[:6] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ConfigError(f"ckpt_path={path} is not a clipo training checkpoint (it holds {keys}, no 'clipo' "
                          "section); resume from a <run>/checkpoints/*.ckpt that train.py wrote, or load other "
                          "weights as the model (model=hub model.name_or_path=...)")
    return checkpoint | {"kind": kind}


def strategy_problem(path: Path, header: dict, strategy: Any, world: int | None) -> str | None:
    """Why this run's strategy cannot load the checkpoint `header` describes (DeepSpeed and FSDP each read only
    their own folders; DeepSpeed only its ZeRO stage over as many processes), or None."""
    kind, name = header["kind"], str(strategy.name)
    deepspeed = name.startswith("deepspeed")
    if kind == "deepspeed":
        zero = (header.get("ds_config") or {}).get("zero_optimization") or {}
        saved, ranks = zero.get("stage"), header.get("dp_world_size")
        if not deepspeed:
            return (f"ckpt_path={path} is a DeepSpeed checkpoint folder (ZeRO stage {saved}), which strategy={name} "
                    f"cannot read: resume with strategy=deepspeed_zero{saved}, or score its weights with "
                    f"`python src/clipo/evaluate.py ckpt_path={path}`")
        if saved is not None and saved != strategy.get("stage"):
            return (f"ckpt_path={path} holds ZeRO stage {saved} state, this run uses stage {strategy.get('stage')}: "
                    f"resume with strategy=deepspeed_zero{saved}")
        if ranks is not None and world is not None and ranks != world:
            return (f"ckpt_path={path} holds ZeRO state partitioned over {ranks} processes, this run starts {world}: "
                    f"resume with trainer.devices x trainer.num_nodes = {ranks}")
    elif kind == "fsdp" and name != "fsdp":
        return (f"ckpt_path={path} is an FSDP checkpoint folder, which strategy={name} cannot read: resume with "
                f"strategy=fsdp, or score its weights with `python src/clipo/evaluate.py ckpt_path={path}`")
    elif kind == "file" and deepspeed:
        return (f"strategy={name} resumes only from the checkpoint folders DeepSpeed writes; ckpt_path={path} is a "
                "file written by another strategy: resume with that strategy (e.g. strategy=ddp)")
    return None
