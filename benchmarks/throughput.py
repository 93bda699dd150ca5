"""Generation throughput against a bare transformers `generate`, and the step-time breakdown.

1. Same model, same prompts, same seed: `clipo.rollout.generate_rollouts` (with the CLIPO
   hidden-state capture on) against `model.generate` alone. Tokens per second counts response
   tokens up to EOS. Target: clipo >= 0.9 of the bare call.
2. A short training run: median seconds per phase (generate, verify, contrastive, logprobs:
   old and reference log-probs, update) and generated tokens per second.

    python benchmarks/throughput.py --model tiny
    python benchmarks/throughput.py --model smollm2_135m --prompts 8 --group-size 8 --max-new-tokens 64
    python benchmarks/throughput.py --model smollm2_135m algorithm.kl_coef=0.01   # with the reference pass
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, save, train_and_report

from clipo.compose import compose


def time_generation(cfg, repeats: int) -> dict[str, float]:
    from clipo.builders import plain, rollout_sampling
    from clipo.data import build_dataset
    from clipo.models import load_model
    from clipo.rollout import HFEngine, generation_config, response_mask_from_ids

    model, tokenizer = load_model(**plain(cfg.model), seed=cfg.seed)
    sampling, _ = rollout_sampling(cfg)
    sample, engine = generation_config(sampling, tokenizer), HFEngine(model, tokenizer)
    records = list(build_dataset(**plain(cfg.data.train)))[: cfg.data.prompts_per_step]
    group = cfg.rollout.group_size
    prompts = [tokenizer.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=False) for r in records]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = encoded.input_ids.repeat_interleave(group, 0), encoded.attention_mask.repeat_interleave(group, 0)
    autocast = nullcontext()  # both on the same float32 weights: precisions are compared in precision.py

    def bare() -> int:
        with torch.no_grad(), autocast:
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=sample)
        return int(response_mask_from_ids(out[:, ids.shape[1]:], [tokenizer.eos_token_id]).sum())

    def clipo() -> int:
        with autocast:
            return int(engine.generate(records, group, sampling, hidden_layer=-1).response_lengths.sum())

    rates: dict[str, list[float]] = {"bare": [], "clipo": []}
    for repeat in range(repeats + 1):  # the first round warms up
        for name, fn in (("bare", bare), ("clipo", clipo)) if repeat % 2 else (("clipo", clipo), ("bare", bare)):
            torch.manual_seed(repeat)
            start = time.perf_counter()
            tokens = fn()
            if repeat:
                rates[name].append(tokens / (time.perf_counter() - start))
    return {"bare_tokens_per_s": median(rates["bare"]), "clipo_tokens_per_s": median(rates["clipo"]),
            "ratio": median(rates["clipo"]) / median(rates["bare"]), "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. algorithm.kl_coef=0.01 (reference pass)")
    args = parser.parse_args()
    overrides = [f"model={args.model}", f"data.prompts_per_step={args.prompts}", f"rollout.group_size={args.group_size}",
                 f"rollout.max_new_tokens={args.max_new_tokens}", "data.val=null", "~callbacks.model_checkpoint",
                 "logger=none", f"trainer.max_steps={args.steps}", *args.overrides]
    import tempfile
    with tempfile.TemporaryDirectory() as out:
        generation = time_generation(compose(overrides, Path(out)), args.repeats)
    run = train_and_report(overrides)
    steps = run["history"][1:] or run["history"]
    phases = {p: median([r.get(f"time/{p}", 0.0) for r in steps]) for p in ("generate", "verify", "contrastive", "logprobs", "update", "step")}
    payload = {"model": args.model, "overrides": overrides, "generation": generation, "median_phase_s": phases,
               "median_train_tokens_per_s": median([r["perf/tokens_per_s"] for r in steps]),
               "peak_rss_mb": run["peak_rss_mb"], "target": "clipo/bare >= 0.9"}
    path = save(f"throughput_{args.model}", payload)
    print(f"generation: clipo {generation['clipo_tokens_per_s']:.0f} tok/s, bare generate "
          f"{generation['bare_tokens_per_s']:.0f} tok/s, ratio {generation['ratio']:.3f} (target >= 0.9)")
    print("median seconds per phase: " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
