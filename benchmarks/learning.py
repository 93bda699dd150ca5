"""Does RL training raise held-out accuracy, and does CLIPO beat plain GRPO? `loss=none` against
`loss=infonce` (reward mode) on the embedded arith task, several seeds each.

Each run is the default training run (same steps, batch, learning rate) in a fresh process with
its own seed (training problems and sampling differ by seed; the held-out sets do not). Held-out
accuracy is greedy mean@1 on original arith problems and on their P1 twins (one added clause),
scored before and after training. Results are saved after every run, so a stopped benchmark
keeps what it finished; `--resume` skips runs already in the JSON.

    python benchmarks/learning.py                                   # 3 seeds x {none, infonce}
    python benchmarks/learning.py --seeds 0 1 --val-size 64 trainer.max_steps=8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, run_in_subprocess, save, train_and_report  # noqa: E402

VARIANTS = {"none": ["loss=none"], "infonce": ["loss=infonce"]}
HELD_OUT = {"original": "arith", "perturbed": "arith_p1"}


def run_once(overrides: list[str]) -> dict:
    started = time.perf_counter()
    report = train_and_report(overrides)
    metrics, history = report["metrics"], report["history"]
    train_acc = [row["train/acc"] for row in history if "train/acc" in row]
    row = {"wall_s": time.perf_counter() - started, "steps": len(train_acc),
           "train_acc_first3": statistics.fmean(train_acc[:3]), "train_acc_last3": statistics.fmean(train_acc[-3:])}
    for label, name in HELD_OUT.items():
        row[f"{label}_before"] = metrics[f"val_before/{name}/acc"]
        row[f"{label}_after"] = metrics[f"val/{name}/acc"]
    return row


def summarise(runs: list[dict]) -> dict:
    """Mean and sample standard deviation across seeds of every per-run figure, per variant."""
    table = {}
    for variant in VARIANTS:
        rows = [r for r in runs if r["variant"] == variant]
        if not rows:
            continue
        keys = [k for k in rows[0] if k not in ("variant", "seed")]
        table[variant] = {"seeds": [r["seed"] for r in rows]}
        for key in keys:
            values = [r[key] for r in rows]
            table[variant][key] = {"mean": statistics.fmean(values),
                                   "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return table


def markdown(table: dict) -> str:
    lines = ["| variant | seeds | original before | original after | perturbed before | perturbed after "
             "| train acc first 3 | train acc last 3 |", "|---|---|---|---|---|---|---|---|"]
    for variant, row in table.items():
        cells = [f"{row[k]['mean']:.3f} ± {row[k]['std']:.3f}" for k in (
            "original_before", "original_after", "perturbed_before", "perturbed_after",
            "train_acc_first3", "train_acc_last3")]
        lines.append(f"| `loss={variant}` | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--val-size", type=int, default=128, help="problems in each held-out set")
    parser.add_argument("--resume", action="store_true", help="keep the runs already saved, do the rest")
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    common = [f"model={args.model}", f"data.val.arith.size={args.val_size}", f"data.val.arith_p1.size={args.val_size}",
              "~callbacks.model_checkpoint", "logger=none", *args.overrides]
    if args.worker:
        variant, seed = args.worker
        print(json.dumps(run_once([*common, *VARIANTS[variant], f"seed={seed}"])))
        return

    name = f"learning_{args.model}"
    saved = RESULTS / f"{name}.json"
    runs = json.loads(saved.read_text())["runs"] if args.resume and saved.exists() else []
    done = {(r["variant"], r["seed"]) for r in runs}
    for seed in args.seeds:  # variants alternate within a seed, so a stopped benchmark stays paired
        for variant in VARIANTS:
            if (variant, seed) in done:
                continue
            print(f"seed {seed}: loss={variant} ...", flush=True)
            extra = ["--model", args.model, "--val-size", str(args.val_size), "--worker", variant, str(seed)]
            runs.append({"variant": variant, "seed": seed,
                         **run_in_subprocess(Path(__file__), [*extra, *args.overrides])})
            print(json.dumps(runs[-1]), flush=True)
            table = summarise(runs)
            save(name, {"model": args.model, "overrides": common, "runs": runs, "summary": table})
    print("\n" + markdown(summarise(runs)))
    print(f"\nsaved {saved}")


if __name__ == "__main__":
    main()
