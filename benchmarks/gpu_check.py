"""What only a CUDA GPU can show, in one command: one verdict line per check, then a JSON line.

    python benchmarks/gpu_check.py                  # on a machine with one CUDA GPU: < 9 minutes
    python benchmarks/gpu_check.py --cpu-dry-run    # the same checks on model=tiny, CPU, fp32 (proves the script)

Checks (each a short `train` run of 3 RL steps in its own process, so a crash or hang is one check's):
- `hf_bf16`: SmolLM2-135M, bf16-mixed, the hf engine, one process (`strategy=auto`);
- `zero2`, `zero3`, `fsdp`: the same under DeepSpeed ZeRO-2, ZeRO-3 and FSDP2 on the one GPU;
- `vllm_sleep`: the vllm engine colocated, sleeping during the update (skipped, with the reason, when
  vllm does not import);
- `vllm_async`: the colocated engine one step ahead (`rollout.max_staleness=1`: the next batch sampled in a
  thread while the update runs, awake), and `server_async`: vLLM's own server on the same GPU
  (`rollout.engine=vllm_server`, weights pushed by vLLM's CUDA-IPC backend), one step ahead; their median
  step time against `vllm_sleep`'s (the synchronous colocated step) is the last verdict line;
- `varlen` (no training run): the packed forward through flash-attention's varlen kernel against the
  padded one on one micro-batch, log-probs and seconds (`benchmarks/varlen_check.py`; skipped when
  flash-attn is not installed).
Each passes when its 3 steps ran, every loss is finite and the exported `policy/` loads with
`AutoModelForCausalLM.from_pretrained` (whether it moved from the initial weights is reported: with
the tiny random model every reward is 0, so nothing moves). Reported: generated tokens per
second (sampling phase), update tokens per second (response tokens through forward + backward) and MFU
(6 N tokens / s for the update, 2 N for generation, against the GPU's dense bf16 peak where it is known;
prompt tokens are left out, so MFU is a lower bound). Needs Python 3.12, a CUDA torch, lightning,
transformers, peft and DeepSpeed (`DS_BUILD_OPS=0 pip install deepspeed`). Without CUDA (and without
--cpu-dry-run) every check is skipped with the reason and the command exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STEPS = 3
CHECK_TIMEOUT_S = {"hf_bf16": 100, "zero2": 75, "zero3": 75, "fsdp": 75, "vllm_sleep": 150, "vllm_async": 150,
                   "server_async": 200, "varlen": 60}  # < 15 min at worst; each check usually well within its bound
STRATEGIES = {"hf_bf16": "auto", "zero2": "deepspeed_zero2", "zero3": "deepspeed_zero3", "fsdp": "fsdp",
              "vllm_sleep": "auto", "vllm_async": "auto", "server_async": "auto"}
VLLM_CHECKS = ("vllm_sleep", "vllm_async", "server_async")
# dense bf16 peak FLOP/s by device name (vendor data sheets, no sparsity)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12,
             "L4": 121e12, "A10G": 70e12, "A10": 125e12, "RTX 4090": 165e12, "B200": 2250e12, "GH200": 989e12}


def overrides(check: str, dry_run: bool) -> list[str]:
    """The `train.py` overrides of one check."""
    common = [f"trainer.max_steps={STEPS}", "data.prompts_per_step=4", "rollout.group_size=8", "rollout.max_new_tokens=64",
              "data.val=null", "logger=none", f"strategy={STRATEGIES[check]}", "callbacks.model_checkpoint.every_n_train_steps=2"]
    if dry_run:
        device = ["model=tiny", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32",
                  "rollout.max_new_tokens=16", "model.tiny.num_attention_heads=2", "model.tiny.num_key_value_heads=1"]
    else:
        device = ["trainer=gpu", "trainer.devices=1", "trainer.precision=bf16-mixed", "model=smollm2_135m"]
    if check == "vllm_sleep":
        device += ["rollout.engine=vllm", "rollout.vllm.sleep=true", "rollout.vllm.max_model_len=512"]
    if check == "vllm_async":
        device += ["rollout.engine=vllm", "rollout.vllm.sleep=false", "rollout.vllm.max_model_len=512",
                   "rollout.max_staleness=1"]
    if check == "server_async":
        device += ["rollout.engine=vllm_server", "rollout.vllm_server.max_model_len=512", "rollout.max_staleness=1"]
    return [*common, *device]


def run_one(check: str, dry_run: bool) -> dict[str, Any]:
    """One check's training, in this process; returns what the verdict needs."""
    if check == "varlen":
        from varlen_check import run_varlen  # benchmarks/ is on the path: this script runs as a file

        return run_varlen(dry_run)
    import torch
    from transformers import AutoModelForCausalLM

    from clipo.builders import plain
    from clipo.compose import compose
    from clipo.models import load_model
    from clipo.train import train

    with tempfile.TemporaryDirectory() as out:
        cfg = compose(overrides(check, dry_run), Path(out))
        initial, _ = load_model(**plain(cfg.model), seed=cfg.seed)
        start = time.perf_counter()
        metrics, objects = train(cfg)
        seconds = time.perf_counter() - start
        exported = AutoModelForCausalLM.from_pretrained(Path(out) / "policy")
        changed = any(not torch.equal(exported.state_dict()[k].float(), v.float())
                      for k, v in initial.state_dict().items() if k in exported.state_dict())
    history = objects["summary"].history if objects.get("summary") else []
    parameters = sum(p.numel() for p in initial.parameters())
    return {"check": check, "steps": len(history), "seconds": round(seconds, 1), "history": history,
            "final_loss": metrics.get("actor/loss"), "parameters": parameters, "export_changed": changed,
            "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and not dry_run else "cpu"}


def throughput(result: dict[str, Any]) -> dict[str, float | None]:
    """Tokens per second of the sampling and update phases over the steps after the first, and MFU."""
    rows = result["history"][1:] or result["history"]
    rollouts = 4 * 8
    tokens = [row.get("train/response_len", 0.0) * rollouts for row in rows]
    generate = sum(row.get("async/sample_s", row.get("time/generate", 0.0)) for row in rows)  # ahead: the sampler's
    update = sum(row.get("time/update", 0.0) for row in rows)
    gen_tps = sum(tokens) / generate if generate else None
    upd_tps = sum(tokens) / update if update else None
    step = sorted(row.get("time/step", 0.0) for row in rows)[len(rows) // 2] if rows else None
    peak = next((v for k, v in PEAK_BF16.items() if k in str(result.get("device"))), None)
    n = result["parameters"]
    return {"step_s": step, "step_tokens_per_s": sum(tokens) / sum(r.get("time/step", 0.0) for r in rows) if rows else None,
            "generate_tokens_per_s": gen_tps, "update_tokens_per_s": upd_tps,
            "mfu_generate": 2 * n * gen_tps / peak if peak and gen_tps else None,
            "mfu_update": 6 * n * upd_tps / peak if peak and upd_tps else None}


def verdict(result: dict[str, Any]) -> tuple[str, str]:
    """(PASS/FAIL, why) for a finished check."""
    losses = [row.get("actor/loss") for row in result["history"]]
    problems = []
    if result["steps"] != STEPS:
        problems.append(f"{result['steps']} of {STEPS} steps")
    if any(loss is None or not math.isfinite(loss) for loss in losses):
        problems.append(f"non-finite loss {losses}")
    moved = "moved" if result["export_changed"] else "unchanged (every group had equal rewards: zero advantages)"
    return ("FAIL", "; ".join(problems)) if problems else ("PASS", f"{STEPS} steps, finite losses, export loads, {moved}")


def skip_reason(check: str, dry_run: bool) -> str | None:
    import importlib.util

    import torch

    if not dry_run and not torch.cuda.is_available():
        return "no CUDA GPU here (run on a GPU machine, or --cpu-dry-run for the same checks on CPU)"
    if check == "varlen" and not dry_run:
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            return "flash-attn is not installed (pip install flash-attn --no-build-isolation)"
    if STRATEGIES.get(check, "").startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        return "deepspeed is not installed (DS_BUILD_OPS=0 pip install deepspeed)"
    if check in VLLM_CHECKS:
        try:
            import vllm  # noqa: F401
        except Exception as error:  # noqa: BLE001  (any import failure is the reason to report)
            return f"vllm does not import: {type(error).__name__}: {str(error)[:120]}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="the same checks on model=tiny, CPU, fp32")
    parser.add_argument("--only", nargs="*", default=list(CHECK_TIMEOUT_S), choices=list(CHECK_TIMEOUT_S))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one check in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.cpu_dry_run), default=float))
        return
    report = {"mode": "cpu-dry-run" if args.cpu_dry_run else "cuda", "checks": {}}
    for check in args.only:
        report["checks"][check] = entry = run_check(check, args.cpu_dry_run)
        print(f"{entry['verdict']:4} {check}: {entry['why']}", flush=True)
    if line := topology_line(report["checks"]):
        print(line, flush=True)
    out = REPO / "benchmarks" / "results" / f"gpu_check{'_cpu_dry_run' if args.cpu_dry_run else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=float))
    print(json.dumps(report, default=float))
    sys.exit(1 if any(c["verdict"] == "FAIL" for c in report["checks"].values()) else 0)


def topology_line(checks: dict[str, dict]) -> str | None:
    """The asynchronous checks' median step time against the synchronous colocated one (one GPU, one run)."""
    sync = checks.get("vllm_sleep", {}).get("step_s")
    ratios = [f"{name} {checks[name]['step_s'] / sync:.2f}x" for name in ("vllm_async", "server_async")
              if sync and checks.get(name, {}).get("step_s")]
    return f"INFO topology: median step time against vllm_sleep (synchronous colocated): {', '.join(ratios)}" \
        if ratios else None


def run_check(check: str, dry_run: bool) -> dict[str, Any]:
    """One check in a fresh process, within its time limit; its verdict and figures."""
    reason = skip_reason(check, dry_run)
    if reason:
        return {"verdict": "SKIP", "why": reason}
    command = [sys.executable, str(Path(__file__).resolve()), "--one", check, *(["--cpu-dry-run"] if dry_run else [])]
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=CHECK_TIMEOUT_S[check])
    except subprocess.TimeoutExpired:
        return {"verdict": "FAIL", "why": f"did not finish within {CHECK_TIMEOUT_S[check]} s"}
    if done.returncode != 0:
        return {"verdict": "FAIL", "why": done.stderr.strip().splitlines()[-1][:300] if done.stderr.strip() else "crashed",
                "stderr_tail": done.stderr[-3000:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if check == "varlen":  # a forward comparison, not a training run
        return {k: result[k] for k in ("verdict", "why", "errors", "seconds_per_micro_batch", "device")}
    state, why = verdict(result)
    figures = throughput(result)
    shown = ", ".join(f"{k} {v:.3g}" for k, v in figures.items() if v is not None)
    if check in ("vllm_async", "server_async"):
        lags = [row.get("async/staleness_max") for row in result["history"]]
        state, why = ("FAIL", f"staleness {lags}, expected [0, 1, 1]") if lags != [0, 1, 1] else (state, why)
    return {"verdict": state, "why": f"{why}; {result['seconds']} s; {shown}", **figures,
            **{k: result[k] for k in ("seconds", "final_loss", "peak_gpu_mem_gib", "device", "parameters")}}


if __name__ == "__main__":
    main()
