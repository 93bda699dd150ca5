"""Shared plumbing for the benchmark scripts: compose a config, run in a fresh process, save results."""

from __future__ import annotations

import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def train_and_report(overrides: list[str]) -> dict[str, Any]:
    """Run `train` in this process and return its per-step history and peak resident memory."""
    from clipo.compose import compose
    from clipo.train import train

    with tempfile.TemporaryDirectory() as out:
        metrics, objects = train(compose(overrides, Path(out)))
        runtime = json.loads((Path(out) / "summary.json").read_text())["runtime"]
    return {
        "history": objects["summary"].history,
        "runtime": runtime,  # the precision plan per phase, threads, engine
        "metrics": metrics,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_in_subprocess(script: Path, args: list[str]) -> dict[str, Any]:
    """Each measurement in a fresh process, so peak memory is its own; the JSON is the last stdout line."""
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def cpu_precision() -> tuple[str, str]:
    """This CPU in words (model, family/model, its bf16 units or none) and the kind of precision `auto` takes
    here: `bf16` on a CPU with bf16 units (clipo then decides each phase from its start-up probe,
    src/clipo/run/precision.py), `32` elsewhere."""
    from clipo.run.precision import CPU_BF16_FLAGS
    from clipo.run.runtime import detect_cpu_flags

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    first_cpu = info.split("\n\n", 1)[0]
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first_cpu.splitlines())}
    flags = detect_cpu_flags()
    native = [flag for flag in CPU_BF16_FLAGS if flag in flags]
    units = f"native bf16 ({', '.join(native)})" if native else "no bf16 units"
    model = f"{fields.get('model name', platform.machine())} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"
    return f"{model}, {units}", "bf16" if native else "32"


def save(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    cpu, precision = cpu_precision()
    payload = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {platform.node()}, python {platform.python_version()}",
        "cpu": cpu,
        "auto_precision": precision,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        **payload,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1))
    return path
