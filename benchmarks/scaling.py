"""How step time grows with the work: group size G x response length, with CLIPO on.

For every (G, max new tokens) cell, a short `loss=infonce` run (reward mode) in a fresh process;
`optimizer.lr=0` keeps the policy, and so the sampled rollouts, the same across steps. The first
step is warm-up; the median of the rest is reported per phase, with CLIPO's own share of
generation time (the contrastive phase must stay a rounding error).

    python benchmarks/scaling.py --model tiny
    python benchmarks/scaling.py --model smollm2_135m --prompts 4 --steps 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, run_in_subprocess, save, train_and_report

PHASES = ("generate", "verify", "contrastive", "logprobs", "update", "step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group-sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--steps", type=int, default=3, help="steps per cell; the first is warm-up")
    parser.add_argument("--worker", nargs=2, type=int, metavar=("G", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    def overrides(group: int, length: int) -> list[str]:
        return [f"model={args.model}", "loss=infonce", "optimizer.lr=0", f"data.prompts_per_step={args.prompts}",
                f"rollout.group_size={group}", f"rollout.max_new_tokens={length}", f"trainer.max_steps={args.steps}",
                f"ppo.micro_batch_size={min(16, args.prompts * group)}", "data.val=null",
                "~callbacks.model_checkpoint", "logger=none"]

    if args.worker:
        print(json.dumps(train_and_report(overrides(*args.worker))))
        return

    cells = []
    for group, length in itertools.product(args.group_sizes, args.lengths):
        print(f"G={group}, {length} tokens ...", flush=True)
        extra = ["--model", args.model, "--prompts", str(args.prompts), "--steps", str(args.steps)]
        run = run_in_subprocess(Path(__file__), [*extra, "--worker", str(group), str(length)])
        steps = run["history"][1:] or run["history"]
        phases = {p: median([row.get(f"time/{p}", 0.0) for row in steps]) for p in PHASES}
        cells.append({"group_size": group, "max_new_tokens": length, "median_phase_s": phases,
                      "tokens_per_s": median([row["perf/tokens_per_s"] for row in steps]),
                      "contrastive_over_generate": phases["contrastive"] / phases["generate"],
                      "peak_rss_mb": run["peak_rss_mb"]})
    path = save(f"scaling_{args.model}", {"model": args.model, "prompts_per_step": args.prompts,
                                          "overrides": overrides(0, 0), "cells": cells})
    print(f"\n{'G':>3}{'tokens':>7}" + "".join(f"{p:>12}" for p in PHASES) + f"{'tok/s':>8}{'contr/gen':>11}")
    for cell in cells:
        print(f"{cell['group_size']:>3}{cell['max_new_tokens']:>7}"
              + "".join(f"{cell['median_phase_s'][p]:>12.3f}" for p in PHASES)
              + f"{cell['tokens_per_s']:>8.0f}{cell['contrastive_over_generate']:>11.4f}")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
