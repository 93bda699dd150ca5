"""Generation topologies on one CPU machine, in one alternated run: the synchronous colocated step
(`rollout.engine=vllm`, engine and trainer taking turns on every core; and, as a control, on the trainer's
core alone with one thread), the synchronous step on vLLM's server
(`rollout.engine=vllm_server`: the server on the upper half of the cores, the trainer on the rest) and the
asynchronous pipeline on that server (`rollout.max_staleness=1`: the next batch sampled while the update runs).

Each round runs a short training of each topology, each in a fresh process: the colocated one, then a
server is started (its start-up is not a step) for the two server runs (their order alternating between
rounds) and stopped (it holds ~3 GB, idle or not). From each run: the median step time of the steps after
the first (which holds the engines' start) and the response tokens per second of step time. Ratios against
the colocated step are taken within each round (pairing keeps them meaningful while the machine's speed
drifts), then their median over rounds.

    python benchmarks/topology.py                          # SmolLM2-135M, 4 x 8 rollouts of <= 64 tokens, 2 rounds
    python benchmarks/topology.py --prompts 2 --group 4 --tokens 48 --steps 3 --rounds 1 --append   # a busy machine
    python benchmarks/topology.py --rounds 1 --append      # one more round, added to benchmarks/results/topology.json
    python benchmarks/topology.py --model tiny model.tiny.num_attention_heads=2 model.tiny.num_key_value_heads=1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, median, save

TOPOLOGIES = {
    "colocated": ["rollout.engine=vllm"],
    # a control: the colocated step on the trainer's core alone, one thread (what the server runs leave it)
    "colocated_one_core": ["rollout.engine=vllm"],
    "server": ["rollout.engine=vllm_server"],
    "server_async": ["rollout.engine=vllm_server", "rollout.max_staleness=1"],
}


def start_server(model_overrides: list[str], log: Path) -> tuple[object, list[int], list[int]]:
    """A server on the upper half of the cores: (server, its cores, the trainer's)."""
    from clipo.builders import plain, rollout_sampling
    from clipo.compose import compose
    from clipo.models import load_model
    from clipo.rollout.engine_choice import engine_dtype
    from clipo.rollout.vllm_server import VLLMServer
    from clipo.rollout.vllm_server_engine import VLLMServerEngine
    from clipo.rollout.vllm_server_launch import split_cores
    from clipo.run.runtime import resolve_precision

    cfg = compose(model_overrides)
    policy, tokenizer = load_model(**plain(cfg.model), seed=cfg.seed)
    settings = plain(cfg.rollout.vllm_server) | {"log_file": str(log)}
    settings["dtype"] = engine_dtype(settings["dtype"], resolve_precision(cfg.trainer).value)
    engine = VLLMServerEngine(policy, tokenizer, **settings)
    server_cpus, trainer_cpus = split_cores("auto", on_cuda=False)
    sampling, _ = rollout_sampling(cfg)
    rows, tokens = cfg.data.prompts_per_step * cfg.rollout.group_size, 128 + sampling.max_new_tokens  # arith: < 128
    server = VLLMServer.start(engine.launch(rows, tokens, server_cpus), timeout_s=900)
    del engine, policy
    return server, server_cpus, trainer_cpus


def run_training(overrides: list[str], cpus: list[int] | None) -> dict:
    """One training in a fresh process pinned to `cpus` (None: every core); its step history."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, str(REPO / "src" / "clipo" / "train.py"), *overrides, f"hydra.run.dir={out}"]
        setup = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, preexec_fn=setup)
        if done.returncode != 0:
            raise RuntimeError(f"training failed: {' '.join(overrides)}\n{done.stderr[-4000:]}")
        return json.loads((Path(out) / "summary.json").read_text())


def figures(summary: dict, rollouts: int) -> dict:
    """Median step time and response tokens per step-second of the steps after the first."""
    rows = summary["history"][1:]
    steps = [row["time/step"] for row in rows]
    tokens = [row["train/response_len"] * rollouts for row in rows]
    phases = {key.removeprefix("time/"): median([r.get(key, 0.0) for r in rows])
              for key in rows[0] if key.startswith("time/") and key != "time/step"}  # fmt: skip
    out = {"step_s": median(steps), "tokens_per_s": sum(tokens) / sum(steps), "steps": steps, "phases_s": phases}
    if "async/staleness_max" in rows[0]:
        out |= {"staleness_max": max(r["async/staleness_max"] for r in rows), "wait_s": median([r["async/wait_s"] for r in rows])}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=4, help="data.prompts_per_step")
    parser.add_argument("--group", type=int, default=8, help="rollout.group_size")
    parser.add_argument("--tokens", type=int, default=64, help="rollout.max_new_tokens")
    parser.add_argument("--append", action="store_true", help="add these rounds to benchmarks/results/topology.json")
    parser.add_argument("overrides", nargs="*", help="more train.py overrides")
    args = parser.parse_args()
    common = [f"model={args.model}", f"trainer.max_steps={args.steps}", f"data.prompts_per_step={args.prompts}",
              f"rollout.group_size={args.group}", f"rollout.max_new_tokens={args.tokens}", "data.val=null", "logger=none", "rollout.vllm.max_model_len=512",
              "rollout.vllm_server.max_model_len=512", *args.overrides]  # fmt: skip
    path = RESULTS / "topology.json"
    earlier = json.loads(path.read_text())["rounds"] if args.append and path.exists() else []
    rounds = earlier + [run_round(len(earlier) + r, common, args.prompts * args.group) for r in range(args.rounds)]
    ratios = {f"{name}_over_colocated_{k}": median([r[name][k] / r["colocated"][k] for r in rounds if name in r])
              for name in TOPOLOGIES if name != "colocated" for k in ("step_s", "tokens_per_s")}  # fmt: skip
    ratios["server_async_over_server_step_s"] = median([r["server_async"]["step_s"] / r["server"]["step_s"]
                                                        for r in rounds])  # fmt: skip
    saved = save("topology", {"overrides": common, "rounds": rounds, "median_ratios": ratios})
    for name in TOPOLOGIES:
        done = [r[name] for r in rounds if name in r]
        print(f"{name:18} step {median([f['step_s'] for f in done]):6.1f} s   "
              f"{median([f['tokens_per_s'] for f in done]):7.1f} tokens/s   ({len(done)} rounds)")
    print(json.dumps(ratios), f"\n{len(rounds)} rounds -> {saved}")


def run_round(index: int, common: list[str], rollouts: int) -> dict:
    """Each topology once: colocated, then the two on one server, in an order alternating with `index`."""
    from clipo.rollout.vllm_server_launch import split_cores

    trainer_cpus = split_cores("auto", on_cuda=False)[1]
    result = {}
    for name, cpus in (("colocated", None), ("colocated_one_core", trainer_cpus))[:: 1 if index % 2 == 0 else -1]:
        result[name] = figures(run_training([*common, *TOPOLOGIES[name]], cpus), rollouts)
        print(f"round {index + 1} {name}: {result[name]}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        server, server_cpus, trainer_cpus = start_server(common, Path(scratch) / "server.log")
        try:
            for name in ("server", "server_async")[:: 1 if index % 2 == 0 else -1]:
                overrides = [*common, *TOPOLOGIES[name], f"rollout.vllm_server.url={server.url}"]
                result[name] = figures(run_training(overrides, trainer_cpus), rollouts)
                print(f"round {index + 1} {name}: {result[name]}", flush=True)
        finally:
            server.stop()
    result["cores"] = {"server": server_cpus, "trainer": trainer_cpus, "colocated": "all"}
    return result


if __name__ == "__main__":
    main()
