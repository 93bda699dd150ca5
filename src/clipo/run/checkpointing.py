"""Checkpoints that nothing can half-write, and that always include the final step.

Lightning writes checkpoints through fsspec: for a local path it writes a temporary file in the
system temp folder and then moves it. When that folder is on another filesystem (a node's /tmp
next to a shared checkpoint disk), the move is a copy, and a job killed during it leaves a
truncated `last.ckpt`. Here a local checkpoint is written beside its target and renamed into
place (`os.replace`, atomic within one filesystem); remote URLs keep Lightning's path.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local writes go to a hidden `.<name>.partial` file, are flushed to
    disk, and are then renamed over the target, so a reader sees the old file or the new one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        # no .ckpt suffix: a partial file is never taken for a checkpoint (ckpt_path=last looks for last*.ckpt)
        partial = target.with_name(f".{target.name}.partial")
        try:
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, target)
        except (OSError, RuntimeError) as error:
            raise checkpoint_write_error(error, target) from error
        finally:
            partial.unlink(missing_ok=True)


FULL_DISK_BYTES = 16 * 2**20  # a write that failed with less than this left counts as a full disk


def checkpoint_write_error(error: BaseException, target: Path) -> BaseException:
    """A failed checkpoint write as a message a user can act on: a full disk (torch says only "unexpected
    pos" or "file write failed"), a folder that cannot be written; anything else unchanged."""
    try:
        free = shutil.disk_usage(target.parent).free
    except OSError:
        free = None
    code = getattr(error, "errno", None)
    if code == errno.ENOSPC or "No space left" in str(error) or (free is not None and free < FULL_DISK_BYTES):
        left = "" if free is None else f" ({free / 2**20:.0f} MiB free there)"
        return OSError(errno.ENOSPC, f"No space left on device: writing checkpoint {target} failed{left}; the "
                                     "previous checkpoint stays")  # torch's own message is chained
    if code in (errno.EACCES, errno.EROFS, errno.EPERM):
        return OSError(code, f"cannot write checkpoint {target} ({os.strerror(code)}); make {target.parent} "
                             "writable or set hydra.run.dir to a writable folder", str(target))
    return error


class LastStepCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` that also writes `last.ckpt` when training ends between periodic saves.

    Lightning's own end-of-training save happens only when no checkpoint was saved at all, so a
    12-step run saving every 10 steps would lose steps 11 and 12.
    """

    @property
    def state_key(self) -> str:
        # Lightning's key includes the save interval, so a run resumed with another interval would not
        # get this callback's state back (and would write last-v1.ckpt beside a stale last.ckpt)
        return type(self).__qualname__

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.save_last_now(trainer)

    def save_last_now(self, trainer: L.Trainer) -> None:
        """Write `last.ckpt` for the current step unless it is written already (a stop signal's save)."""
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def read_sharded_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint folder written by DeepSpeed (`strategy=deepspeed_*`: a `latest` file and a tag folder)
    or by FSDP (`strategy=fsdp`: torch distributed-checkpoint shards and Lightning's `meta.pt`) as one
    checkpoint dict on the CPU, with the full `state_dict`; needs no process group."""
    import tempfile

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="clipo-ckpt-") as tmp:
        if (path / "latest").is_file():
            from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

            return convert_zero_checkpoint_to_fp32_state_dict(path, Path(tmp) / "full.ckpt")
        if (path / "meta.pt").is_file():
            from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

            dcp_to_torch_save(path, Path(tmp) / "full.ckpt")
            state = torch.load(Path(tmp) / "full.ckpt", map_location="cpu", weights_only=False)
            return {**torch.load(path / "meta.pt", map_location="cpu", weights_only=False), **state}
    raise ValueError(f"{path} is a folder but neither a DeepSpeed checkpoint (no `latest` file) nor an FSDP one "
                     "(no `meta.pt`); pass a checkpoint file or folder written by clipo, or an exported policy_path")
