"""Running a tiny multirun as users do (a subprocess of train.py -m) for the sweep tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# one RL step of the tiny model: a job takes a few seconds
TINY = ["model=tiny", "trainer.max_steps=1", "trainer.precision=32", "data.prompts_per_step=2", "rollout.group_size=2",
        "rollout.max_new_tokens=4", "data.train.size=8", "validation.before_training=false", "verifier.num_workers=1"]
# two problems in each validation set
SMALL_VAL = ["data.val.arith.size=2", "data.val.arith_p1.size=2"]


def run_multirun(root: Path, *overrides: str, env: dict[str, str] | None = None,
                 timeout: int = 300) -> subprocess.CompletedProcess:
    """`python src/clipo/train.py -m <TINY> <overrides>` in `root` (its logs/ there), offline, one thread; an
    override of a TINY key wins (the later value does)."""
    command = [sys.executable, str(REPO / "src" / "clipo" / "train.py"), "-m", *TINY, *overrides,
               f"paths.root_dir={root}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


def sweep_folder(root: Path, task_name: str = "train") -> Path:
    (folder,) = (root / "logs" / task_name / "multiruns").iterdir()
    return folder
