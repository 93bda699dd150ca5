"""`clipo.report` on a real tiny multirun (subprocess, as users run it; its two jobs in parallel processes through
`hydra/launcher=parallel`), a crashed run, and seed aggregation."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from clipo.multirun.runs import NoRunsError, parse_overrides
from clipo.report import load_runs, main, summarize, write_report

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model=tiny", "trainer.max_steps=2", "trainer.precision=32", "data.prompts_per_step=2", "rollout.group_size=2",
    "rollout.max_new_tokens=4", "data.train.size=8", "data.val.arith.size=2", "data.val.arith_p1.size=2",
    "validation.before_training=false", "verifier.num_workers=1",
]
PLOTS = ["heldout_accuracy.png", "reward_accuracy.png", "contrastive.png", "robustness_gap.png"]


_SHARED: dict[str, Path] = {}  # one multirun per session, also for tests/test_notebooks.py (which imports it)


@pytest.fixture(scope="session")
def tiny_multirun(tmp_path_factory) -> Path:
    """Two runs of the loss ablation preset narrowed to infonce/none, two RL steps each, each job in its own
    process, both at once (submitit's local executor, `hydra/launcher=parallel`; ~30-50 s, once)."""
    if "folder" not in _SHARED:
        _SHARED["folder"] = _run_tiny_multirun(tmp_path_factory.mktemp("multirun"))
    return _SHARED["folder"]


def _run_tiny_multirun(root: Path) -> Path:
    command = [sys.executable, str(REPO / "src" / "clipo" / "train.py"), "-m", "hydra/launcher=parallel",
               "experiment=ablate_loss", "loss=infonce,none", *TINY, f"paths.root_dir={root}"]
    # One torch thread: the tiny model's ops are too small to share, and on a busy 2-core machine two
    # threads made each RL step ~10x slower (6.5 s vs 0.5 s measured) through synchronisation.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, check=False, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = (root / "logs" / "ablate_loss" / "multiruns").iterdir()  # the preset's task_name
    return folder


def _submitit_job_spans(folder: Path) -> dict[int, tuple[str, str]]:
    """Process id -> (start, end) of each job, from submitit's own log of it."""
    spans = {}
    for log in folder.glob(".submitit/*/*_log.out"):
        text = log.read_text()
        start = re.search(r"\((.+?)\) - Starting with JobEnvironment\(job_id=(\d+)", text)
        end = re.search(r"\((.+?)\) - Job completed successfully", text)
        assert start and end, text[-2000:]
        spans[int(start[2])] = (start[1], end[1])
    return spans


def test_the_launcher_ran_each_job_in_its_own_process_at_the_same_time(tiny_multirun):
    spans = _submitit_job_spans(tiny_multirun)
    assert len(spans) == 2 and os.getpid() not in spans  # two processes, neither this one
    (start0, end0), (start1, end1) = spans.values()  # timestamps in one format: text order is time order
    assert max(start0, start1) < min(end0, end1), f"the jobs did not overlap: {spans}"
    assert sorted(p.name for p in tiny_multirun.iterdir() if not p.name.startswith(".")) == ["0", "1", "multirun.yaml"]
    for job in ("0", "1"):  # the folders of a basic-launcher sweep, plus each job's outcome
        assert json.loads((tiny_multirun / job / "job.json").read_text())["status"] == "completed"
        assert not (tiny_multirun / job / ".clipo.lock").exists()  # released at the end


def test_report_of_a_tiny_multirun_has_one_row_per_run_and_every_plot(tiny_multirun, tmp_path, capsys):
    assert main([str(tiny_multirun), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for name in ["report.md", "report.csv", *PLOTS]:
        path = tmp_path / name
        assert path.is_file() and path.stat().st_size > 0, name
        assert str(path) in printed  # the command says where each file went
    assert (tmp_path / "reward_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(tmp_path / "report.csv")
    assert sorted(table["loss"]) == ["infonce", "none"]  # one row per run, the swept choice as a column
    assert (table["metrics_from"] == "summary").all() and (table["seed"] == 0).all()  # the preset's one seed
    summaries = [json.loads((tiny_multirun / str(run) / "summary.json").read_text())["metrics"] for run in table["run"]]
    for row, metrics in zip(table.itertuples(), summaries):
        assert math.isclose(table.loc[row.Index, "val/arith/acc"], metrics["val/arith/acc"])
        gap = metrics["val/arith/acc"] - metrics["val/arith_p1/acc"]
        assert math.isclose(table.loc[row.Index, "gap/arith_p1"], gap)
    markdown = (tmp_path / "report.md").read_text().splitlines()
    rows = [line for line in markdown if line.startswith("| ") and not line.startswith("| run")]
    assert len(rows) == 2 and any("| infonce |" in r for r in rows) and any("| none |" in r for r in rows)
    assert "Mean ± std" not in "\n".join(markdown)  # one seed: no aggregate table


def test_crashed_run_falls_back_to_its_csv_log(tiny_multirun, tmp_path):
    """A run without summary.json (it crashed) is reported from the last logged value of each metric."""
    folder = tmp_path / "multirun"
    shutil.copytree(tiny_multirun, folder, ignore=shutil.ignore_patterns("policy", "checkpoints", "*.pt"))
    (folder / "0" / "summary.json").unlink()
    csv = pd.read_csv(folder / "0" / "csv" / "metrics.csv")
    runs = load_runs(folder).set_index("run")
    assert runs.loc["0", "metrics_from"] == "csv" and runs.loc["1", "metrics_from"] == "summary"
    # train rows come first and the validation row last: each metric's last non-empty entry
    assert math.isclose(runs.loc["0", "train/reward"], csv["train/reward"].dropna().iloc[-1])
    assert math.isclose(runs.loc["0", "val/arith_p1/acc"], csv["val/arith_p1/acc"].dropna().iloc[-1])
    assert csv["train/reward"].dropna().size == 2  # both steps were logged: not a vacuous "last row"
    files = write_report(folder)
    assert "no summary.json" in files["report.md"].read_text()
    (folder / "1" / "summary.json").unlink()
    shutil.rmtree(folder / "1" / "csv")  # crashed before logging anything
    runs = load_runs(folder).set_index("run")
    assert runs.loc["1", "metrics_from"] == "none" and pd.isna(runs.loc["1"].get("train/reward"))


def _fake_run(folder: Path, job: int, overrides: list[str], metrics: dict[str, float]) -> None:
    run = folder / str(job)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    history = [{"step": 1.0, **metrics}]
    (run / "summary.json").write_text(json.dumps({"metrics": metrics, "history": history}))


@pytest.fixture
def seeded_folder(tmp_path) -> Path:
    """loss x seed, final accuracy chosen so the mean and std are easy by hand."""
    folder = tmp_path / "sweep"
    accuracies = {"infonce": [0.1, 0.2, 0.6], "supcon": [0.5, 0.5, 0.5]}
    job = 0
    for loss, values in accuracies.items():
        for seed, acc in enumerate(values):
            metrics = {"train/reward": acc, "val/arith/acc": acc, "val/arith_p1/acc": acc / 2}
            _fake_run(folder, job, [f"loss={loss}", f"seed={seed}", "model=tiny"], metrics)
            job += 1
    return folder


def test_summarize_gives_mean_and_std_over_seeds(seeded_folder):
    runs = load_runs(seeded_folder)
    assert runs.attrs["choices"] == ["loss", "seed", "model"]
    summary = summarize(runs).set_index("loss")  # by: swept choices except seed (model is constant)
    assert list(summary.index) == ["infonce", "supcon"] and summary["runs"].tolist() == [3, 3]
    # infonce: mean (0.1 + 0.2 + 0.6) / 3 = 0.3; deviations -0.2, -0.1, 0.3 -> sample variance
    # (0.04 + 0.01 + 0.09) / 2 = 0.07, std sqrt(0.07) = 0.264575
    assert math.isclose(summary.loc["infonce", "train/reward mean"], 0.3)
    assert math.isclose(summary.loc["infonce", "train/reward std"], math.sqrt(0.07))
    assert summary.loc["supcon", "train/reward std"] == 0.0
    # gap = acc - acc / 2 = acc / 2: infonce mean 0.15
    assert math.isclose(summary.loc["infonce", "gap/arith_p1 mean"], 0.15)


def test_report_of_seeded_sweep_writes_the_aggregate(seeded_folder, tmp_path):
    files = write_report(seeded_folder, tmp_path)
    markdown = files["report.md"].read_text()
    assert "Mean ± std over seeds" in markdown and "0.300 ± 0.265" in markdown
    by_config = pd.read_csv(files["report_by_config.csv"])
    assert len(by_config) == 2 and "seed" not in by_config.columns
    assert all(files[name].stat().st_size > 0 for name in PLOTS)


def test_parse_overrides_types_values_and_skips_deletions():
    parsed = parse_overrides(["loss=supcon", "+loss.margin=0.3", "seed=2", "~data.val", "data.val=null", "x=a=b"])
    assert parsed == {"loss": "supcon", "loss.margin": 0.3, "seed": 2, "data.val": None, "x": "a=b"}


def test_folder_without_runs_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(NoRunsError, match="no runs in .*multiruns/<date_time>"):
        load_runs(tmp_path)
    assert main([str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    _fake_run(tmp_path / "multiruns" / "2026-01-01_00-00-00", 0, ["seed=0"], {"train/reward": 1.0})
    with pytest.raises(NoRunsError, match="holds multirun folders.*2026-01-01_00-00-00"):
        load_runs(tmp_path / "multiruns")
