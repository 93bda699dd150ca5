"""Each phase of an RL step in float32 and in each bf16 way, on the CPU at hand (issue #36).

Phases, on the run's own shapes (SmolLM2-135M, 4 prompts x 8 rollouts x 64 tokens by default):
- hf generate: transformers `generate` of every rollout at full length (`min_new_tokens` = max, so every
  variant decodes the same number of tokens), hidden states captured for CLIPO;
- vllm generate: the vllm engine holding float32 or bf16 weights (each in a fresh process, alternated;
  its start is not timed), seconds per generated token;
- collector pass: the no-grad training forward that gives CLIPO's hidden states (the vllm engine's);
- update: the PPO update (forward + backward + clipping + AdamW step) on a synthetic trajectory of the
  same shapes (`benchmarks/update_phase.py`'s), micro-batches as the config sizes them.
Variants, alternated round by round in one process (the order reversed every other round):
- `fp32`: float32 weights, no autocast (`trainer.precision=32`);
- `autocast`: float32 weights under Lightning's bf16-mixed context (per-op casts, cache off, as
  Lightning runs it; the hf engine sampled this way before issue #36);
- `copy`: the bf16 working copy of float32 master weights, cast once per update
  (`trainer.precision=bf16-copy`, what `auto` picks on a CPU where the probe finds bf16 faster);
  the update's time includes casting the copy again after the optimizer step.
`bf16-true` (bf16 weights stepped by the optimizer) computes exactly as `copy` does, without the
float32 master: it rounds lr-1e-5 updates away, so it is not a candidate (src/clipo/run/precision.py).

Each phase's first call (kernel set-up, allocator) is reported apart from the timed rounds, and a child
process counts the oneDNN kernels each bf16 call creates (ONEDNN_VERBOSE=profile_create) and their set-up
milliseconds: the first call's one-time cost, which the issue saw as a 40 s first update; figures are
medians over rounds, with the paired ratio to fp32 (round by round), wall seconds and process CPU seconds
(user + system: on a shared machine the wall time also measures the other processes). The JSON
(benchmarks/results/precision_<model>.json) names the CPU kind, the threads and the plan `auto` makes here.

    python benchmarks/precision.py                              # all phases, 3 rounds, 2 threads
    python benchmarks/precision.py --phases hf update --rounds 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, run_in_subprocess, save
from update_phase import synthetic_rollouts

VARIANTS = ("fp32", "autocast", "copy")
LOCAL_PHASES = ("hf", "collector", "update")


def config(args: argparse.Namespace, extra: list[str] = ()):
    from clipo.compose import compose

    overrides = [f"model={args.model}", f"data.prompts_per_step={args.prompts}", f"rollout.group_size={args.group}",
                 f"rollout.max_new_tokens={args.new_tokens}", "trainer.precision=32", "rollout.engine=hf",
                 "data.val=null", *extra]
    return compose(overrides, Path(tempfile.mkdtemp(prefix="precision-bench-")))


class Phases:
    """The module, its working copy and one call per (phase, variant)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from lightning.pytorch.plugins.precision import MixedPrecision

        from clipo.builders import build_module, plain, rollout_sampling
        from clipo.data import build_dataset
        from clipo.rollout.hf_engine import generation_config
        from clipo.run.working_copy import WorkingCopy

        self.cfg = config(args)
        self.module = build_module(self.cfg)
        self.policy, self.tokenizer = self.module.policy, self.module.tokenizer
        self.copy = WorkingCopy(self.policy)
        self.optimizer = self.module.configure_optimizers()
        self.autocast = MixedPrecision("bf16-mixed", "cpu")  # Lightning's own bf16-mixed context
        self.records = list(build_dataset(**plain(self.cfg.data.train)))[: args.prompts]
        self.generation = generation_config(rollout_sampling(self.cfg)[0], self.tokenizer)
        self.generation.min_new_tokens = args.new_tokens  # every variant decodes the same tokens
        self.rollouts = synthetic_rollouts(self.cfg, self.tokenizer)

    def model(self, variant: str) -> torch.nn.Module:
        return self.copy.module if variant == "copy" else self.policy

    def run(self, phase: str, variant: str) -> None:
        from contextlib import nullcontext

        torch.manual_seed(0)
        context = self.autocast.forward_context() if variant == "autocast" else nullcontext()
        with context:
            getattr(self, phase)(self.model(variant), variant)

    def hf(self, model: torch.nn.Module, variant: str) -> None:
        from clipo.rollout.hf_engine import generate_rollouts

        generate_rollouts(model, self.tokenizer, self.records, self.cfg.rollout.group_size, self.generation, -1)

    def collector(self, model: torch.nn.Module, variant: str) -> None:
        from clipo.rl.old_policy import LogprobPasses

        # the vllm engine gives no hidden states: the collector's pass takes them (one update a step: no pi_old)
        batching = self.module.updater.batching
        LogprobPasses(model, 1.0, batching, old_before_update=False, hidden_layer=-1)(self.rollouts)

    def update(self, model: torch.nn.Module, variant: str) -> None:
        from clipo.rl.collector import Trajectory
        from clipo.run.timing import PhaseTimer

        n = len(self.rollouts.responses)
        correct = torch.arange(n) % 3 == 0
        advantages = torch.randn(n, generator=torch.Generator().manual_seed(0))
        batch = Trajectory(self.rollouts, correct.float(), correct, correct.float(), advantages)  # on-policy
        self.module.updater.forward_model = model
        self.module.updater.update(batch, self.optimizer, lambda loss: loss.backward(), PhaseTimer())
        if variant == "copy":
            self.copy.refresh()  # what the optimizer's step hook does in a run


def timed(call) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def local_phases(args: argparse.Namespace) -> dict:
    """Every in-process phase, variants alternated; first calls apart."""
    torch.set_num_threads(args.threads)
    phases = Phases(args)
    runs = {phase: {v: {"first": None, "wall": [], "cpu": []} for v in VARIANTS} for phase in args.phases
            if phase in LOCAL_PHASES}
    for round_ in range(args.rounds + 1):  # round 0: each variant's first call
        order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]
        for phase in runs:
            for variant in order:
                wall, cpu = timed(lambda: phases.run(phase, variant))
                entry = runs[phase][variant]
                if round_ == 0:
                    entry["first"] = {"wall": wall, "cpu": cpu}
                else:
                    entry["wall"].append(wall)
                    entry["cpu"].append(cpu)
                print(f"round {round_} {phase} {variant}: wall {wall:.2f} s, cpu {cpu:.2f} s", file=sys.stderr,
                      flush=True)
    return runs


def kernel_worker(args: argparse.Namespace) -> None:
    """One bf16 variant's first and second call of each phase, marked on stdout, where oneDNN reports every
    kernel it creates (ONEDNN_VERBOSE=profile_create, set by `kernel_setup`)."""
    torch.set_num_threads(args.threads)
    phases = Phases(args)
    for phase in [p for p in args.phases if p in LOCAL_PHASES]:
        for call in (1, 2):
            print(f"MARK,{phase},{args.variant},{call}", flush=True)
            phases.run(phase, args.variant)
    print("MARK,end", flush=True)


def kernel_setup(args: argparse.Namespace) -> dict:
    """oneDNN kernels created (count, milliseconds) in each bf16 call, each variant in a fresh process: the
    first call's set-up, which later calls of the same shapes find in oneDNN's cache."""
    import os
    import subprocess

    env = {**os.environ, "ONEDNN_VERBOSE": "profile_create"}
    lines = []
    for variant in ("copy", "autocast"):
        command = [sys.executable, __file__, *child_args(args), "--phases", *args.phases, "--kernel-worker",
                   "--variant", variant]
        lines += subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout.splitlines()
    created: dict[str, dict[str, float]] = {}
    key = None
    for line in lines:
        fields = line.split(",")
        if fields[0] == "MARK":
            key = None if fields[1] == "end" else f"{fields[1]}/{fields[2]}/call {fields[3]}"
            if key:
                created[key] = {"kernels": 0, "ms": 0.0}
        elif key and "create:cache_miss" in line:
            created[key]["kernels"] += 1
            created[key]["ms"] += float(fields[-1])
    return created


def vllm_worker(args: argparse.Namespace) -> dict:
    """One vllm engine at `--dtype`: a warm-up generation, then `--rounds` timed ones."""
    from clipo.builders import plain, rollout_sampling
    from clipo.data import build_dataset
    from clipo.models import load_model
    from clipo.rollout import VLLMEngine

    torch.set_num_threads(args.threads)
    cfg = config(args)
    policy, tokenizer = load_model(**plain(cfg.model), seed=cfg.seed)
    settings = plain(cfg.rollout.vllm) | {"dtype": args.dtype}
    engine = VLLMEngine(policy, tokenizer, **settings)
    sampling = rollout_sampling(cfg)[0]
    records = list(build_dataset(**plain(cfg.data.train)))[: args.prompts]
    result = {"first": None, "wall": [], "cpu": [], "tokens": []}
    for repeat in range(args.rounds + 1):
        torch.manual_seed(repeat)
        wall, cpu = timed(lambda: result.setdefault("batch", engine.generate(records, args.group, sampling)))
        tokens = int(result.pop("batch").response_lengths.sum())
        if repeat == 0:
            result["first"] = {"wall": wall, "cpu": cpu, "tokens": tokens}
        else:
            result["wall"].append(wall), result["cpu"].append(cpu), result["tokens"].append(tokens)
    return result


def vllm_phase(args: argparse.Namespace) -> dict:
    """vllm at float32 and bf16, each in fresh processes, alternated; per generated token."""
    runs = {"fp32": [], "copy": []}  # "copy": the bf16 engine, the plan's counterpart of sampling in bf16
    for round_ in range(args.processes):
        for variant in ("fp32", "copy") if round_ % 2 == 0 else ("copy", "fp32"):
            dtype = "float32" if variant == "fp32" else "bfloat16"
            child = [*child_args(args), "--vllm-worker", "--dtype", dtype]
            runs[variant].append(run_in_subprocess(Path(__file__), child))
            print(f"vllm {dtype}: {runs[variant][-1]['wall']}", file=sys.stderr, flush=True)
    merged = {}
    for variant, results in runs.items():
        per_token = [w / t for r in results for w, t in zip(r["wall"], r["tokens"])]
        cpu_per_token = [c / t for r in results for c, t in zip(r["cpu"], r["tokens"])]
        merged[variant] = {"first": results[0]["first"], "wall": per_token, "cpu": cpu_per_token,
                           "tokens": [t for r in results for t in r["tokens"]]}
    return merged


def child_args(args: argparse.Namespace) -> list[str]:
    return ["--model", args.model, "--prompts", str(args.prompts), "--group", str(args.group), "--new-tokens",
            str(args.new_tokens), "--threads", str(args.threads), "--rounds", str(args.rounds)]


def summary(runs: dict) -> dict:
    """Per phase and variant: medians, the first call, and the paired ratio to fp32 (round by round)."""
    table = {}
    for phase, variants in runs.items():
        base = variants["fp32"]
        table[phase] = {}
        for variant, r in variants.items():
            table[phase][variant] = {
                "wall_s": median(r["wall"]), "cpu_s": median(r["cpu"]), "first": r["first"],
                "wall_over_fp32": median([a / b for a, b in zip(r["wall"], base["wall"])]),
                "cpu_over_fp32": median([a / b for a, b in zip(r["cpu"], base["cpu"])]),
            }
    return table


def auto_plan(args: argparse.Namespace) -> dict:
    """The plan `trainer.precision=auto` makes for this config on this machine (the probe runs)."""
    from clipo.run.runtime import resolve_precision

    cfg = config(args)
    cfg.trainer.precision = "auto"
    plan = resolve_precision(cfg)
    return {"lines": plan.lines(), **plan.as_dict()}


def print_table(table: dict, args: argparse.Namespace, cpu: str) -> None:
    print(f"\n{cpu}; {args.threads} threads; {args.model}, {args.prompts} x {args.group} rollouts x "
          f"{args.new_tokens} tokens; medians of {args.rounds} alternated rounds (vllm: per generated token, "
          f"{args.processes} processes per dtype)")
    print("| phase | variant | wall s | CPU s | wall / fp32 | CPU / fp32 | first call wall s (CPU s) |")
    print("|---|---|---|---|---|---|---|")
    for phase, variants in table.items():
        for variant, r in variants.items():
            unit = 1e3 if phase == "vllm" else 1  # vllm: ms per token
            first = r["first"] or {}
            print(f"| {phase}{' (ms/token)' if phase == 'vllm' else ''} | {variant} | {r['wall_s'] * unit:.2f} | "
                  f"{r['cpu_s'] * unit:.2f} | {r['wall_over_fp32']:.2f} | {r['cpu_over_fp32']:.2f} | "
                  f"{first.get('wall', float('nan')):.2f} ({first.get('cpu', float('nan')):.2f}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after each variant's first call")
    parser.add_argument("--processes", type=int, default=2, help="vllm: fresh processes per dtype")
    parser.add_argument("--phases", nargs="+", default=[*LOCAL_PHASES, "vllm"])
    parser.add_argument("--no-kernel-count", action="store_true", help="skip counting oneDNN's kernel set-up")
    parser.add_argument("--vllm-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kernel-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.vllm_worker:
        print(json.dumps(vllm_worker(args)))
        return
    if args.kernel_worker:
        kernel_worker(args)
        return
    if "vllm" in args.phases and importlib.util.find_spec("vllm") is None:
        print("vLLM is not installed: the vllm phase is left out", file=sys.stderr)
        args.phases.remove("vllm")
    runs = local_phases(args)
    if "vllm" in args.phases:
        runs["vllm"] = vllm_phase(args)
    table = summary(runs)
    kernels = {} if args.no_kernel_count else kernel_setup(args)
    plan = auto_plan(args)
    from common import cpu_precision

    cpu = cpu_precision()[0]
    print_table(table, args, cpu)
    for key, made in kernels.items():
        print(f"oneDNN kernels created in {key}: {made['kernels']} in {made['ms']:.0f} ms")
    print("\n".join(["", "trainer.precision=auto here:", *plan["lines"]]))
    partial = "" if set(args.phases) >= {*LOCAL_PHASES, "vllm"} else "_" + "_".join(args.phases)
    name = f"precision_{args.model}{partial}" + ("" if args.threads == 2 else f"_{args.threads}threads")
    path = save(name, {"args": vars(args), "threads": args.threads, "table": table, "runs": runs, "auto": plan,
                       "onednn_kernels_created": kernels,
                       "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                       "note": "ratios are paired round by round; wall / fp32 on a shared machine mixes in the "
                               "other processes' load, CPU / fp32 less so"})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
