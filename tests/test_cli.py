"""The command line as users type it: `python src/clipo/train.py ...` (subprocesses, tiny model)."""

import subprocess
import sys
from pathlib import Path

from tests.conftest import fresh_shell_env

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model=tiny", "trainer.max_steps=1", "trainer.precision=32", "data.prompts_per_step=2", "rollout.group_size=2",
    "rollout.max_new_tokens=4", "data.train.size=8", "data=arith", "data.val=null", "verifier.num_workers=1",
]


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = fresh_shell_env(HF_HUB_OFFLINE="1", HYDRA_FULL_ERROR="0", **(env or {}))
    command = [sys.executable, str(REPO / "src" / "clipo" / "train.py"), *args, f"paths.root_dir={cwd}"]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_unknown_group_option_lists_the_choices(tmp_path):
    result = _run("loss=nce", cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not find 'loss/nce'" in result.stderr and "supcon" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_batch_fails_before_loading_with_one_clear_message(tmp_path):
    result = _run(*TINY, "ppo.mini_batch_size=3", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2
    assert "ppo.mini_batch_size=3 is not a multiple of rollout.group_size=2" in output
    assert "Traceback" not in output


def test_missing_data_file_is_named(tmp_path):
    result = _run(*TINY, "data.train.source=parquet", "+data.train.path=/nowhere/train.parquet", "~data.train.size",
                  "~data.train.levels", "~data.train.perturbations", "~data.train.seed", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "/nowhere/train.parquet does not exist" in output
    assert "Traceback" not in output


def test_multirun_runs_each_choice(tmp_path):
    result = _run("-m", *TINY, "loss=infonce,supcon", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted((tmp_path / "logs" / "train" / "multiruns").glob("*/*/csv/metrics.csv"))
    assert len(runs) == 2
    assert sorted(p.parents[1].joinpath(".hydra", "overrides.yaml").read_text().count("loss=") for p in runs) == [1, 1]


def test_two_process_ddp_on_cpu_with_gloo(tmp_path):
    result = _run(*TINY, "trainer.accelerator=cpu", "trainer.devices=2", "strategy=ddp",
                  "strategy.process_group_backend=gloo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting with 2 processes" in result.stdout + result.stderr
    assert list((tmp_path / "logs" / "train" / "runs").glob("*/checkpoints/last.ckpt"))


def test_uncached_hub_model_offline_fails_in_one_line_before_loading(tmp_path):
    """HF_HUB_OFFLINE=1, an empty cache, a made-up id: one line says what is missing and how to point at a
    folder, before data, model or Lightning start (no 'Seed set'), and no Hydra traceback advice."""
    args = [a for a in TINY if not a.startswith("model=")]
    result = _run("model=hub", "model.name_or_path=made-up-org/no-such-model-1234", *args, cwd=tmp_path,
                  env={"HF_HOME": str(tmp_path / "hf")})
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    [line] = [line for line in output.splitlines() if "made-up-org/no-such-model-1234" in line]
    assert "is not in the local cache and the hub is unreachable (HF_HUB_OFFLINE=1)" in line
    assert "model.name_or_path=/path/to/folder" in line
    assert "Traceback" not in output and "HYDRA_FULL_ERROR" not in output and "Seed set" not in output
