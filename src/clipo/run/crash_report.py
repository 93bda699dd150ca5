"""What a crash says: the console's last line, and the error and advice summary.json records.

The advice fits what exists: "continue with ckpt_path=last" only where the run folder holds a checkpoint.
With several processes the report names the rank that failed first and its own error (a rank whose collective
broke because another rank failed reports that rank's record, `clipo.run.ranks`), or for a timed-out
collective, this rank's phase and where every other rank last was.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipo.run import ranks


def error_text(error: BaseException) -> str:
    """`Type: first line of the message` (with the next line when the first only announces it, as torch's
    "Error(s) in loading state_dict for ...:"), at most 300 characters."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    message = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines[0] if lines else "")
    return f"{type(error).__name__}: {message}"[:300]


def what_to_do(error: BaseException, run_dir: str, resumable: bool = True) -> str:
    """Advice for the common failures a user can act on; else where the traceback is. `resumable`: the run
    folder holds a checkpoint to continue from (else the advice is to run again)."""
    text = str(error)
    resume = f"continue with hydra.run.dir={run_dir} ckpt_path=last" if resumable else "run the same command again"
    if isinstance(error, OSError) and error.errno == errno.ENOSPC or "No space left" in text or "unexpected pos" in text:
        return f"the disk is full: free space on the disk of {run_dir} (or set hydra.run.dir elsewhere), then {resume}"
    if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        where = getattr(error, "filename", None) or run_dir
        return f"{where} is not writable: fix its permissions or set hydra.run.dir to a writable folder"
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return ("out of memory: lower data.prompts_per_step, ppo.micro_batch_size (or set "
                f"ppo.max_tokens_per_micro_batch) or rollout.max_new_tokens, then {resume}")
    if "Error(s) in loading state_dict" in text:
        return ("the checkpoint's weights do not fit this run's model (a change accepted with resume.allow_changes "
                "changes their shapes): resume with the checkpoint's model settings, or start fresh (ckpt_path=null)")
    return f"fix the cause (full traceback in {run_dir}/train.log), then {resume}"


@dataclass(frozen=True)
class CrashReport:
    """What a crash says: `line` on the console, `error` and `what_to_do` in summary.json, and the rank that
    failed first when several processes ran (`failed_rank`)."""

    line: str
    error: str
    what_to_do: str
    failed_rank: int | None = None


def crash_report(error: BaseException, step: int, crash: Any, run_dir: str, rank: int = 0,
                 world: int = 1, resumable: bool = True) -> CrashReport:
    """The report of `error` on this rank (`step`: RL steps completed). With several processes, a collective
    that broke because another rank failed reports that rank's own error, and a timeout names the phase of
    each rank."""
    where = (f"in RL step {step + 1}" if crash.in_step else f"after RL step {step}" if crash.started
             else "while setting up or restoring the checkpoint")
    saved = f"; {crash.outcome}" if crash.outcome else ""
    text, advice = error_text(error).rstrip("."), what_to_do(error, run_dir, resumable)
    if world == 1:
        return CrashReport(f"training failed {where}: {text}{saved}. To do: {advice}", text, advice)
    phase = ranks.BOARD.phase
    if not ranks.is_communication_error(error):
        return CrashReport(f"training failed on rank {rank} ({phase}): {text}{saved}. To do: {advice}",
                           f"rank {rank} ({phase}): {text}", advice, rank)
    # a broken connection follows a rank's exit, whose record is written before it: wait a moment for it; a
    # timeout means the others are alive somewhere else, so their phases (read now) are the story
    wait_s = 0.0 if ranks.is_timeout(error) else ranks.PEER_RECORD_WAIT_S
    if (peer := ranks.first_peer_failure(Path(run_dir), wait_s)) is not None:
        cause = f"rank {peer['rank']} ({peer['phase']}): {peer['error']}"
        line = (f"training failed on {cause}; rank {rank} stopped with it (its collective in {phase} broke){saved}. "
                f"To do: fix rank {peer['rank']}'s error (its traceback is in {run_dir}/train.log, under "
                f"\"training crashed on rank {peer['rank']}\"), then {advice.split(', then ')[-1]}")
        return CrashReport(line, cause, line.split("To do: ")[-1], peer["rank"])
    others = "; ".join(f"rank {r}: {p}" for r, p in sorted(ranks.peer_phases().items())) or "not known"
    if ranks.is_timeout(error):
        advice = (f"find why the other ranks did not reach this collective (their last phases: {others}); if they "
                  f"are only slower, raise distributed.timeout_s")
        cause = f"rank {rank}: a collective in {phase} timed out waiting for the other ranks ({text})"
    else:
        advice = "the other ranks' logs have the cause (a rank killed from outside, e.g. out of memory, records none)"
        cause = f"rank {rank}: its collective in {phase} lost another rank, which recorded no error ({text})"
    return CrashReport(f"training failed on {cause}{saved}. Last phases: {others}. To do: {advice}", cause, advice, rank)
