"""LoRA against full fine-tuning: peak memory and step time on SmolLM2-135M-Instruct, same batch.

Both variants run the default CLIPO step (reward mode, InfoNCE, mean pooler) on the same arith
prompts: 4 prompts x 8 rollouts, 64 new tokens, `trainer.precision=auto` (float32 on a CPU
without bf16 units), one update per batch. `full` trains every weight; `lora` trains a rank-16 adapter (alpha 32, all-linear). With
`--kl 0.001` the KL term is on: full fine-tuning then loads a second (reference) model, LoRA takes the
reference from the policy with its adapter disabled. Each run is a fresh process (peak resident
memory is its own); the variants alternate (full, lora, lora, full, ...) so that load on a shared
machine falls on both; the first step of each run is warm-up and is not timed.

    python benchmarks/lora.py --repeats 2 --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, run_in_subprocess, save, train_and_report

PROMPTS, GROUP, NEW_TOKENS, SEED = 4, 8, 64, 0
VARIANTS = {"full": ["model.lora_rank=0"], "lora": ["model.lora_rank=16", "model.lora_alpha=32"]}


def overrides(variant: str, steps: int, kl: float) -> list[str]:
    return ["model=smollm2_135m", f"data.prompts_per_step={PROMPTS}", f"rollout.group_size={GROUP}",
            f"rollout.max_new_tokens={NEW_TOKENS}", f"trainer.max_steps={steps}", f"seed={SEED}",
            f"algorithm.kl_coef={kl}", "data.val=null", "~callbacks.model_checkpoint", "logger=none",
            "logging.rollouts_every_n_steps=0", *VARIANTS[variant]]


def worker(variant: str, steps: int, kl: float) -> dict:
    report = train_and_report(overrides(variant, steps, kl))
    history = report["history"][1:]  # the first step is warm-up
    return {"step_s": [row["time/step"] for row in history], "update_s": [row.get("time/update", 0.0) for row in history],
            "peak_rss_mb": report["peak_rss_mb"], "overrides": overrides(variant, steps, kl)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="RL steps per run (the first is warm-up)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per variant, alternating")
    parser.add_argument("--kl", type=float, default=0.0, help="algorithm.kl_coef (> 0 loads a reference for full)")
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.kl)))
        return

    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats):
        order = list(VARIANTS) if repeat % 2 == 0 else list(VARIANTS)[::-1]
        for name in order:
            print(f"repeat {repeat}: {name} ...", flush=True)
            runs[name].append(run_in_subprocess(Path(__file__), ["--steps", str(args.steps), "--kl", str(args.kl),
                                                                 "--worker", name]))
    summary = {
        name: {
            "median_step_s": median([s for run in rs for s in run["step_s"]]),
            "median_update_s": median([s for run in rs for s in run["update_s"]]),
            "median_peak_rss_mb": median([run["peak_rss_mb"] for run in rs]),
        }
        for name, rs in runs.items()
    }
    ratios = {f"{key}_lora_over_full": summary["lora"][key] / summary["full"][key] for key in summary["full"]}
    payload = {"threads": os.cpu_count(),  # the CPU kind and the precision auto picks: added by save()
               "kl_coef": args.kl, "summary": summary, "ratios": ratios, "runs": runs}
    path = save(f"lora_smollm2_135m{'_kl' if args.kl else ''}", payload)
    print(f"\n{'variant':<8}{'step s':>9}{'update s':>10}{'peak RSS MB':>13}")
    for name, row in summary.items():
        print(f"{name:<8}{row['median_step_s']:>9.2f}{row['median_update_s']:>10.2f}{row['median_peak_rss_mb']:>13.0f}")
    print("lora / full: " + ", ".join(f"{k.removesuffix('_lora_over_full')} {v:.2f}" for k, v in ratios.items()))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
