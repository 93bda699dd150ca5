"""Rollout engines compared: `rollout.engine=vllm` against `rollout.engine=hf`, in one process and run.

1. The same batch and seed (prompts x group x max new tokens), engines alternated, a warm-up round
   first: seconds per rollout phase and response tokens per second (up to EOS), medians; for vllm
   also the training forward the collector adds (old log-probs + hidden states for CLIPO).
2. Short training runs of the same config with each engine: median seconds of the generate phase
   (steps after the first, which includes the engine start) and of the rest of the step.
Target: vllm's generate phase <= 0.6 x hf's.

    PYTHONPATH=src /work/venvs/vllm/bin/python benchmarks/engines.py --model smollm2_135m
    python benchmarks/engines.py --model tiny model.tiny.num_attention_heads=2 model.tiny.num_key_value_heads=1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, save, train_and_report

from clipo.compose import compose


def time_rollouts(cfg, repeats: int) -> dict[str, dict[str, float]]:
    """Per engine: median seconds and tokens/s of one rollout phase on the same records and seed."""
    from clipo.builders import build_batching, plain, rollout_sampling
    from clipo.data import build_dataset
    from clipo.models import load_model
    from clipo.rl.old_policy import LogprobPasses
    from clipo.rollout import HFEngine, VLLMEngine

    policy, tokenizer = load_model(**plain(cfg.model), seed=cfg.seed)
    sampling, _ = rollout_sampling(cfg)
    records = list(build_dataset(**plain(cfg.data.train)))[: cfg.data.prompts_per_step]
    group = cfg.rollout.group_size
    engines = {"hf": HFEngine(policy, tokenizer), "vllm": VLLMEngine(policy, tokenizer, **plain(cfg.rollout.vllm))}
    start = time.perf_counter()
    engines["vllm"]._engine()
    engine_start_s = time.perf_counter() - start
    seconds: dict[str, list[float]] = {"hf": [], "vllm": [], "vllm_training_forward": []}
    tokens: dict[str, list[int]] = {"hf": [], "vllm": []}
    for repeat in range(repeats + 1):  # round 0 warms up
        for name in ("hf", "vllm") if repeat % 2 else ("vllm", "hf"):
            torch.manual_seed(repeat)
            start = time.perf_counter()
            batch = engines[name].generate(records, group, sampling, hidden_layer=-1 if name == "hf" else None)
            elapsed = time.perf_counter() - start
            if repeat:
                seconds[name].append(elapsed)
                tokens[name].append(int(batch.response_lengths.sum()))
            if name == "vllm" and repeat:
                start = time.perf_counter()
                batching = build_batching(cfg, policy, whole_groups=False)
                LogprobPasses(policy, sampling.logprob_temperature, batching, False, hidden_layer=-1)(batch)
                seconds["vllm_training_forward"].append(time.perf_counter() - start)
    out = {name: {"median_s": median(seconds[name]), "median_tokens_per_s": median([t / s for t, s in zip(tokens[name], seconds[name])]),
                  "seconds": seconds[name], "tokens": tokens[name]} for name in ("hf", "vllm")}  # fmt: skip
    out["vllm"] |= {"engine_start_s": engine_start_s, "training_forward_median_s": median(seconds["vllm_training_forward"])}
    out["ratio_vllm_over_hf_s"] = out["vllm"]["median_s"] / out["hf"]["median_s"]
    return out


def time_training(overrides: list[str]) -> dict[str, dict[str, float]]:
    """Per engine: median seconds per phase of a short training run (steps after the first)."""
    result = {}
    for engine in ("hf", "vllm"):
        run = train_and_report([*overrides, f"rollout.engine={engine}"])
        steps = run["history"][1:] or run["history"]
        phases = ("generate", "verify", "contrastive", "logprobs", "update", "step")
        result[engine] = {p: median([r.get(f"time/{p}", 0.0) for r in steps]) for p in phases}
    result["ratio_generate_vllm_over_hf"] = result["vllm"]["generate"] / result["hf"]["generate"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = parser.parse_args()
    overrides = [f"model={args.model}", f"data.prompts_per_step={args.prompts}", f"rollout.group_size={args.group_size}",
                 f"rollout.max_new_tokens={args.max_new_tokens}", "trainer.precision=32", "data.val=null",
                 "~callbacks.model_checkpoint", "logger=none", f"trainer.max_steps={args.steps}", *args.overrides]  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        rollouts = time_rollouts(compose(overrides, Path(out)), args.repeats)
    payload = {"model": args.model, "precision": "fp32", "overrides": overrides, "rollouts": rollouts,
               "target": "vllm generate <= 0.6 x hf"}  # fmt: skip
    save(f"engines_{args.model}", payload)  # part 1 kept even if the training runs are interrupted
    training = time_training(overrides)
    path = save(f"engines_{args.model}", payload | {"training_median_phase_s": training})
    for name in ("hf", "vllm"):
        r = rollouts[name]
        print(f"{name}: rollout phase {r['median_s']:.2f} s, {r['median_tokens_per_s']:.0f} tok/s")
    print(f"vllm engine start {rollouts['vllm']['engine_start_s']:.1f} s; its training forward "
          f"{rollouts['vllm']['training_forward_median_s']:.2f} s; ratio vllm/hf {rollouts['ratio_vllm_over_hf_s']:.2f}")
    for name in ("hf", "vllm"):
        print(f"training, {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in training[name].items()))
    print(f"generate phase ratio vllm/hf {training['ratio_generate_vllm_over_hf']:.2f} (target <= 0.6); saved {path}")


if __name__ == "__main__":
    main()
