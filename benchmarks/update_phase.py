"""The update phase (old/reference log-probs + forward/backward/step) before and after issue #18.

Each variant runs in a fresh process (so `ru_maxrss` is its own peak) on the same synthetic
rollout batch: the first prompts of the configured arith task through SmolLM2's chat template,
`G` rollouts each, responses of random tokens whose lengths are drawn with a fixed seed (40%
truncated at `max_new_tokens`, the rest uniform in [max/4, max), then EOS). The update's cost
depends on the lengths, not on the token values. "before" imports the code at the branch start
from another worktree (`--before-src`), "after" this worktree's `src`.

    python benchmarks/update_phase.py --before-src /work/wt/update18-base/src             # default task
    python benchmarks/update_phase.py --before-src ... --max-new-tokens 256 --repeats 2
    python benchmarks/update_phase.py --before-src ... --memory    # 1 x 2 rollouts of 1024 tokens, fp32
    python benchmarks/update_phase.py --head 4096 --repeats 3       # the LM head alone: full vs chunked

The machine's fp32 matrix-product rate (2 threads) is measured in the same process right before
each timed update (the machine is shared, so its rate moves), and the update's rate is stated against it: 6 x parameters x tokens (tokens: every rollout's prompt +
response tokens, as a padded-per-rollout forward would process them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def synthetic_rollouts(cfg, tokenizer, device="cpu"):
    import torch

    from clipo.builders import plain
    from clipo.data import build_dataset
    from clipo.rollout import RolloutBatch, response_mask_from_ids

    prompts_per_step, group, new = cfg.data.prompts_per_step, cfg.rollout.group_size, cfg.rollout.max_new_tokens
    records = list(build_dataset(**plain(cfg.data.train)))[:prompts_per_step]
    text = [tokenizer.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=False) for r in records]
    encoded = tokenizer(text, return_tensors="pt", padding=True, add_special_tokens=False)
    prompt_ids = encoded.input_ids.repeat_interleave(group, 0)  # [N, P]
    prompt_mask = encoded.attention_mask.repeat_interleave(group, 0)
    n = prompt_ids.shape[0]
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(max(new // 4, 1), new, (n,), generator=gen)
    lengths[torch.rand(n, generator=gen) < 0.4] = new  # truncated
    margin = min(200, len(tokenizer) // 4)  # clear of the special tokens (model=tiny has 100 tokens)
    responses = torch.randint(margin, len(tokenizer) - margin, (n, new), generator=gen)
    ended = torch.arange(new)[None, :] >= lengths[:, None]
    responses[ended] = tokenizer.eos_token_id  # EOS (then padding) after each response
    response_mask = response_mask_from_ids(responses, [tokenizer.eos_token_id])
    return RolloutBatch(
        sequences=torch.cat([prompt_ids, responses], 1), attention_mask=torch.cat([prompt_mask, response_mask.long()], 1),
        response_mask=response_mask, prompt_len=prompt_ids.shape[1],
        groups=torch.arange(prompts_per_step).repeat_interleave(group), prompts=[""] * n, responses=[""] * n,
        ground_truths=[r["ground_truth"] for r in records for _ in range(group)], truncated=~ended.any(-1),
        **({"data_sources": [""] * n} if "data_sources" in RolloutBatch.__dataclass_fields__ else {}),  # before #13
    )


def child(args: argparse.Namespace) -> dict:
    """One variant: build the module, time `repeats` update phases on the synthetic batch."""
    import torch

    from clipo.builders import build_module

    torch.set_num_threads(args.threads)
    try:
        from clipo.compose import compose

        cfg = compose(json.loads(args.overrides), Path(tempfile.mkdtemp(prefix="update-phase-")))  # a run folder
    except ImportError:  # the code before issue #13 (--before-src)
        from clipo.config import compose

        cfg = compose(json.loads(args.overrides))
    module = build_module(cfg)
    optimizer = module.configure_optimizers()
    module.optimizers = lambda: optimizer  # outside a Trainer: the raw optimizer, plain backward
    module.manual_backward = lambda loss: loss.backward()
    rollouts = synthetic_rollouts(cfg, module.tokenizer)
    correct = torch.zeros(len(rollouts.responses), dtype=torch.bool)
    setup_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    bf16 = cfg.trainer.precision == "bf16-mixed"
    times = {"logprobs_s": [], "update_s": [], "matmul_fp32_gflops": []}
    for repeat in range(args.repeats):
        times["matmul_fp32_gflops"].append(matmul_gflops())  # the machine's rate right now (it is shared)
        torch.manual_seed(repeat)
        advantages = torch.randn(len(rollouts.responses))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            start = time.perf_counter()
            if hasattr(getattr(module, "collector", None), "logprobs"):  # since issue #23: the trajectory carries pi_old
                from clipo.rl.collector import Trajectory
                from clipo.run.timing import PhaseTimer

                old, ref = module.collector.logprobs(rollouts)
                middle = time.perf_counter()
                batch = Trajectory(rollouts, correct.float(), correct, correct.float(), advantages, old, ref)
                module.updater.update(batch, optimizer, module.manual_backward, PhaseTimer())
            elif hasattr(module, "updater"):  # since issue #13: the PolicyUpdater
                from clipo.rl.collector import CollectedBatch

                old, ref = module.updater.old_and_reference_logprobs(rollouts)
                middle = time.perf_counter()
                batch = CollectedBatch(rollouts, correct.float(), correct, correct.float(), advantages)
                module.updater.optimise(batch, old, ref, optimizer, module.manual_backward)
            else:
                old, ref = module._old_and_reference_logprobs(rollouts)
                middle = time.perf_counter()
                module._update_policy(rollouts, advantages, correct, old, ref)
            end = time.perf_counter()
        times["logprobs_s"].append(middle - start)
        times["update_s"].append(end - middle)
    mask = rollouts.attention_mask.bool()
    return {
        **times,
        "setup_rss_mb": setup_rss,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "params": sum(p.numel() for p in module.policy.parameters()),
        "tokens": int(mask.sum()),  # prompt + response tokens of every rollout
        "distinct_tokens": int(mask[:, : rollouts.prompt_len].sum() / cfg.rollout.group_size
                               + rollouts.response_mask.sum()),  # each prompt once + responses
        "rollouts": len(rollouts.responses),
        "prompt_len": rollouts.prompt_len,
        "mean_response_len": float(rollouts.response_lengths.float().mean()),
    }


def head_child(variant: str, positions: int, threads: int) -> dict:
    """The LM head alone (SmolLM2's shapes, tied weight): log-probs of `positions` tokens, forward +
    backward, with all [M, V] logits at once ("full", the code before) or chunked ("chunked")."""
    import torch

    from clipo.rollout.logprobs import token_logprobs

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    head = torch.nn.Linear(576, 49152, bias=False)
    states = torch.randn(positions, 576, requires_grad=True)
    targets = torch.randint(49152, (positions,))
    import torch._dynamo  # noqa: F401  (imported by Lightning/transformers in training; checkpoint needs it)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    if variant == "full":
        logits = head(states).float()
        logprobs = logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, -1)
        with torch.no_grad():  # the entropy metric, as the training forward takes it
            (torch.softmax(logits, -1) * logits).sum(-1)
    else:
        logprobs, _ = token_logprobs(head, states, targets, with_entropy=True)
    logprobs.sum().backward()
    return {"seconds": time.perf_counter() - start,
            "extra_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before}


def matmul_gflops(size: int = 1536, repeats: int = 5) -> float:
    """fp32 GFLOP/s of a square matrix product on the current threads (median of `repeats`)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - start)
    return 2 * size**3 / sorted(seconds)[repeats // 2] / 1e9


def run_variant(src: str, overrides: list[str], repeats: int, threads: int, extra: list[str] | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": src}
    cmd = [sys.executable, __file__, "--child", "--overrides", json.dumps(overrides), "--repeats", str(repeats),
           "--threads", str(threads), *(extra or [])]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(src).parent)
    if result.returncode != 0:
        raise RuntimeError(f"variant {src} {overrides} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="[]", help=argparse.SUPPRESS)
    parser.add_argument("--before-src", required=False, help="src folder of the code before (e.g. a worktree of main)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--micro-batch-size", type=int, default=16)
    parser.add_argument("--budgets", type=int, nargs="*", default=[], help="after-variants with this token budget")
    parser.add_argument("--layouts", nargs="*", default=[], help="also these ppo.forward_layout values (varlen, padded)")
    parser.add_argument("--precision", default="bf16-mixed", help="trainer.precision (32 or bf16-mixed)")
    parser.add_argument("--memory", action="store_true", help="1 prompt x 2 rollouts of 1024 tokens, fp32, 1 pass")
    parser.add_argument("--head", type=int, default=0, help="time the LM head alone on this many positions")
    parser.add_argument("--head-variant", default="chunked", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(head_child(args.head_variant, args.head, args.threads) if args.head else child(args)))
        return
    if args.head:
        rounds = [{v: run_variant(str(REPO / "src"), [], 0, args.threads, ["--head", str(args.head), "--head-variant", v])
                   for v in ("full", "chunked")} for _ in range(args.repeats)]
        for v in ("full", "chunked"):
            print(v, "seconds", [round(r[v]["seconds"], 2) for r in rounds],
                  "extra peak MB", [round(r[v]["extra_peak_mb"]) for r in rounds])
        sys.path.insert(0, str(REPO / "benchmarks"))
        from common import save

        save(f"update_phase_head_{args.head}", {"args": vars(args), "rounds": rounds})
        return
    if args.memory:
        args.prompts, args.group_size, args.max_new_tokens, args.micro_batch_size = 1, 2, 1024, 2
        args.precision, args.repeats = "32", 1
    base = ["model=smollm2_135m", "loss=none", f"data.prompts_per_step={args.prompts}",
            f"rollout.group_size={args.group_size}", f"rollout.max_new_tokens={args.max_new_tokens}",
            f"ppo.micro_batch_size={args.micro_batch_size}", f"trainer.precision={args.precision}", "data.val=null"]
    per_rollouts = ["ppo.max_tokens_per_micro_batch=null"]  # --micro-batch-size rollouts a pass, not the token budget
    variants = {"after": (str(REPO / "src"), base + per_rollouts)}
    if args.before_src:
        variants = {"before": (args.before_src, base), **variants}
    for budget in args.budgets:
        variants[f"after, budget {budget}"] = (str(REPO / "src"), base + [f"ppo.max_tokens_per_micro_batch={budget}"])
    for layout in args.layouts:
        variants[f"after, {layout}"] = (str(REPO / "src"), base + per_rollouts + [f"ppo.forward_layout={layout}"])
    results = {}
    for name, (src, overrides) in variants.items():
        results[name] = run_variant(src, overrides, args.repeats, args.threads)
        print(name, json.dumps(results[name]), file=sys.stderr, flush=True)
    print_table(results, args)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from common import save

    save(f"update_phase_{'memory' if args.memory else args.max_new_tokens}", {"args": vars(args), **results})


def print_table(results: dict, args: argparse.Namespace) -> None:
    from statistics import median as med

    print(f"{args.threads} threads, trainer.precision={args.precision}; matmul: fp32 1536^3 measured before each update")
    print("ratio: the update's rate over the matmul rate, counting every rollout's prompt + response (padded) or "
          "only real tokens (each prompt once per group, responses unpadded)")
    print("| variant | log-probs s | update s (each) | peak RSS MB (after setup) | update GFLOP/s | matmul GFLOP/s "
          "| ratio, padded | ratio, real tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        update, rate = med(r["update_s"]), med(r["matmul_fp32_gflops"])
        gflops = 6 * r["params"] * r["tokens"] / update / 1e9
        real = 6 * r["params"] * r["distinct_tokens"] / update / 1e9
        print(f"| {name} | {med(r['logprobs_s']):.2f} | {update:.1f} ({', '.join(f'{t:.1f}' for t in r['update_s'])}) "
              f"| {r['peak_rss_mb']:.0f} ({r['setup_rss_mb']:.0f}) | {gflops:.1f} | {rate:.1f} | {gflops / rate:.2f} "
              f"| {real / rate:.2f} |")


if __name__ == "__main__":
    main()
