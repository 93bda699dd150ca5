"""Cost of CLIPO: step time of `loss=infonce` (reward mode) over `loss=none`, same seed and config.

The learning rate is 0, so the policy never changes and both variants sample exactly the same
rollouts every step: the difference is CLIPO's own work (hidden-state capture during generation,
pooling, head, loss, the head's optimizer step). Each run is a fresh process (peak memory is
its own); variants alternate to spread machine noise; the first step of each run is warm-up.

    python benchmarks/contrastive_overhead.py                     # SmolLM2-135M, default config
    python benchmarks/contrastive_overhead.py --model tiny --steps 4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, run_in_subprocess, save, train_and_report  # noqa: E402

VARIANTS = {"none": ["loss=none"], "infonce": ["loss=infonce"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for both variants")
    args = parser.parse_args()
    common = [f"model={args.model}", f"trainer.max_steps={args.steps}", "optimizer.lr=0", "data.val=null",
              "~callbacks.model_checkpoint", "logger=none", *args.overrides]
    if args.worker:
        print(json.dumps(train_and_report(common + VARIANTS[args.worker])))
        return

    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats):
        for name in VARIANTS:
            print(f"repeat {repeat + 1}/{args.repeats}: loss={name} ...", flush=True)
            runs[name].append(run_in_subprocess(Path(__file__), ["--model", args.model, "--steps", str(args.steps),
                                                                 "--worker", name, *args.overrides]))
    rows = {}
    for name, results in runs.items():
        steps = [row for result in results for row in result["history"][1:]]  # drop each run's warm-up step
        rows[name] = {
            "median_step_s": median([r["time/step"] for r in steps]),
            "median_generate_s": median([r["time/generate"] for r in steps]),
            "median_contrastive_s": median([r.get("time/contrastive", 0.0) for r in steps]),
            "median_update_s": median([r["time/update"] for r in steps]),
            "peak_rss_mb": max(result["peak_rss_mb"] for result in results),
            "steps_measured": len(steps),
        }
    ratio = rows["infonce"]["median_step_s"] / rows["none"]["median_step_s"]
    payload = {"model": args.model, "overrides": common, "variants": rows, "step_time_ratio_infonce_over_none": ratio,
               "target": "<= 1.05"}
    path = save(f"contrastive_overhead_{args.model}", payload)
    print(f"\n{'variant':<10}{'step s':>9}{'generate s':>12}{'contrastive s':>15}{'update s':>10}{'peak MB':>9}")
    for name, row in rows.items():
        print(f"{name:<10}{row['median_step_s']:>9.2f}{row['median_generate_s']:>12.2f}"
              f"{row['median_contrastive_s']:>15.3f}{row['median_update_s']:>10.2f}{row['peak_rss_mb']:>9.0f}")
    print(f"\nstep time infonce / none = {ratio:.3f} (target <= 1.05); saved {path}")


if __name__ == "__main__":
    main()
