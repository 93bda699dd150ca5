"""Does RL training raise held-out accuracy, and does CLIPO beat plain GRPO? `loss=none` against
`loss=infonce` (reward mode) on the embedded arith task, several seeds each.

Each run is the default training run (same steps, batch, learning rate) in a fresh process with
its own seed (training problems and sampling differ by seed; the held-out sets do not). Held-out
accuracy is greedy mean@1 on original arith problems and on their P1 twins (one added clause),
scored before and after training. Results are saved after every run, so a stopped benchmark
keeps what it finished; `--resume` skips runs already in the JSON (with every run there, it only
prints the table and redraws the figure).

    python benchmarks/learning.py                                   # 3 seeds x {none, infonce}
    python benchmarks/learning.py --seeds 0 1 --val-size 64 trainer.max_steps=8
    python benchmarks/learning.py --variants infonce --tag lora model.lora_rank=16 model.lora_alpha=32
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


def paired_differences(runs: list[dict]) -> dict:
    """infonce minus none on the seeds both finished, per held-out set (after training)."""
    by_key = {(r["variant"], r["seed"]): r for r in runs}
    seeds = sorted({seed for variant, seed in by_key if variant == "infonce" and ("none", seed) in by_key})
    out = {}
    for label in HELD_OUT:
        diffs = [by_key["infonce", s][f"{label}_after"] - by_key["none", s][f"{label}_after"] for s in seeds]
        out[label] = {"seeds": seeds, "per_seed": diffs, "mean": statistics.fmean(diffs) if diffs else float("nan"),
                      "std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0}
    return out


def markdown(table: dict) -> str:
    lines = ["| variant | seeds | original before | original after | perturbed before | perturbed after "
             "| train acc first 3 | train acc last 3 |", "|---|---|---|---|---|---|---|---|"]
    for variant, row in table.items():
        cells = [f"{row[k]['mean']:.3f} ± {row[k]['std']:.3f}" for k in (
            "original_before", "original_after", "perturbed_before", "perturbed_after",
            "train_acc_first3", "train_acc_last3")]
        lines.append(f"| `loss={variant}` | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_differences(differences: dict) -> str:
    return "\n".join(
        f"infonce - none on {label} after training, paired by seed {row['seeds']}: "
        f"{row['mean']:+.3f} ± {row['std']:.3f} (per seed {', '.join(f'{d:+.3f}' for d in row['per_seed'])})"
        for label, row in differences.items()
    )


def plot(runs: list[dict], path: Path) -> Path:
    """Held-out accuracy before and after training, one dot per seed, a bar for the mean."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 3.2), layout="constrained")
    for axis, label in zip(figure.subplots(1, 2, sharey=True), HELD_OUT):
        for offset, variant in enumerate(VARIANTS):
            rows = [r for r in runs if r["variant"] == variant]
            if not rows:  # a run of some variants only (--variants)
                continue
            for slot, moment in enumerate(("before", "after")):
                values = [r[f"{label}_{moment}"] for r in rows]
                x = slot * 3 + offset
                axis.bar(x, statistics.fmean(values), color=f"C{offset}", alpha=0.35 + 0.4 * slot,
                         label=f"loss={variant}" if slot else None)
                axis.scatter([x] * len(values), values, color="black", s=10, zorder=3)
        axis.set_xticks([0.5, 3.5], ["before", "after"])
        axis.set_title(f"held-out {HELD_OUT[label]} ({label})")
    figure.axes[0].set_ylabel("greedy accuracy")
    figure.axes[0].legend(loc="upper left")
    figure.savefig(path, dpi=120)
    return path


def save_runs(name: str, model: str, overrides: list[str], runs: list[dict]) -> None:
    save(name, {"model": model, "overrides": overrides, "runs": runs, "summary": summarise(runs),
                "infonce_minus_none_after": paired_differences(runs)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--val-size", type=int, default=128, help="problems in each held-out set")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--tag", default="", help="suffix of the results' name (e.g. lora, for a LoRA run's overrides)")
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

    name = f"learning_{args.model}" + (f"_{args.tag}" if args.tag else "")
    saved = RESULTS / f"{name}.json"
    runs = json.loads(saved.read_text())["runs"] if args.resume and saved.exists() else []
    done = {(r["variant"], r["seed"]) for r in runs}
    for seed in args.seeds:  # variants alternate within a seed, so a stopped benchmark stays paired
        for variant in args.variants:
            if (variant, seed) in done:
                continue
            print(f"seed {seed}: loss={variant} ...", flush=True)
            extra = ["--model", args.model, "--val-size", str(args.val_size), "--worker", variant, str(seed)]
            runs.append({"variant": variant, "seed": seed,
                         **run_in_subprocess(Path(__file__), [*extra, *args.overrides])})
            print(json.dumps(runs[-1]), flush=True)
            save_runs(name, args.model, common, runs)
    save_runs(name, args.model, common, runs)
    print("\n" + markdown(summarise(runs)) + "\n\n" + markdown_differences(paired_differences(runs)))
    print(f"\nsaved {saved} and {plot(runs, saved.with_suffix('.png'))}")


if __name__ == "__main__":
    main()
