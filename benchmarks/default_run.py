"""The README's first command with each rollout engine: `python src/clipo/train.py` at its defaults.

CLIPO in reward mode on arith, SmolLM2-135M-Instruct, 4 prompts x 8 rollouts of 64 tokens,
`trainer.precision=auto` (bf16-mixed on a CPU with bf16 units, the vllm engine then in bf16 too),
with `rollout.engine=hf` and `rollout.engine=vllm` (what `auto` picks when vLLM is installed).
Validation, checkpoints and loggers are off so that only the RL steps are timed. Each engine runs in
a fresh process (its own peak memory), the engines alternate over `--rounds`, and the first step of
every run (the vllm engine's start, the first dequantisation) is left out of the medians.

    python benchmarks/default_run.py --steps 4 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_precision, median, run_in_subprocess, save, train_and_report

ENGINES = ("hf", "vllm")
PHASES = ("step", "generate", "verify", "contrastive", "logprobs", "update")


def worker(engine: str, steps: int) -> dict:
    overrides = [f"rollout.engine={engine}", f"trainer.max_steps={steps}", "data.val=null", "~callbacks.model_checkpoint",
                 "logger=none"]  # fmt: skip
    report = train_and_report(overrides)
    rows = report["history"][1:]
    return {"phases_s": {p: [row.get(f"time/{p}", 0.0) for row in rows] for p in PHASES},
            "peak_rss_mb": report["peak_rss_mb"], "train_acc": [row.get("train/acc") for row in report["history"]],
            "overrides": overrides}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="RL steps per run (the first is not timed)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per engine, alternated")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps)))
        return
    runs: dict[str, list[dict]] = {engine: [] for engine in ENGINES}
    for round_ in range(args.rounds):
        for engine in ENGINES if round_ % 2 == 0 else ENGINES[::-1]:
            print(f"{engine}: {args.steps} steps ...", flush=True)
            runs[engine].append(run_in_subprocess(Path(__file__), ["--steps", str(args.steps), "--worker", engine]))
    medians = {engine: {p: median([s for run in rs for s in run["phases_s"][p]]) for p in PHASES} |
               {"peak_rss_mb": median([run["peak_rss_mb"] for run in rs])} for engine, rs in runs.items()}  # fmt: skip
    ratios = {key: medians["vllm"][key] / medians["hf"][key] for key in ("step", "generate", "peak_rss_mb")}
    cpu, precision = cpu_precision()
    path = save("default_run_smollm2_135m", {"precision": precision, "runs": runs, "medians": medians,
                                             "ratios_vllm_over_hf": ratios})
    print(f"\n{cpu}; trainer.precision=auto -> {precision}")
    print(f"{'engine':<8}" + "".join(f"{p + ' s':>14}" for p in PHASES) + f"{'peak RSS MB':>14}")
    for engine, m in medians.items():
        print(f"{engine:<8}" + "".join(f"{m[p]:>14.2f}" for p in PHASES) + f"{m['peak_rss_mb']:>14.0f}")
    print("vllm / hf: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()) + f"; saved {path}")


if __name__ == "__main__":
    main()
