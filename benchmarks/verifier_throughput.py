"""Verifications per second of the `math` and `gsm8k` verifiers on this machine.

    python benchmarks/verifier_throughput.py [--repeats 5] [--batch 512] [--workers 2]

Batches mimic training: half right answers, rewritten as a model would write them
(`\\dfrac`, spacing, `\\left(`, decimals or `a/b` for fractions, `x = ...`), half wrong
ones (another problem's answer, or the number off by one), in three response styles
(boxed, a stated final answer in `$...$`, a bare last number). Every repeat draws a new
batch, so no worker cache has seen its responses (ground truths repeat, as a group's
samples share one). Ground truths come from the paper's sets under `CLIPO_BENCH_DIR`
(default `<repo>/../shared/data/clipo-bench`) when present, synthetic otherwise. Reports
the median over repeats (pool start-up excluded: it is paid once per run), and the CPU
time a check costs (trainer process and workers together), which machine load does not
inflate as it does wall time; saves JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

from clipo.verifiers import GSM8KVerifier, MathVerifier
from clipo.verifiers.math_verifier import gold_answer
from clipo.verifiers.numbers import parse_number

REPO = Path(__file__).resolve().parents[1]
STYLES = ("So the final answer is $\\boxed{{{}}}$.", "Adding up, the answer is ${}$.", "We get {}")


def ground_truths(file: str, fallback: list[str], n: int, seed: int) -> tuple[list[str], str]:
    path = Path(os.environ.get("CLIPO_BENCH_DIR", REPO.parent / "shared" / "data" / "clipo-bench")) / file
    if path.exists():
        import pandas as pd

        truths = [gold_answer(str(rm["ground_truth"])) for rm in pd.read_parquet(path)["reward_model"]]
        source = str(path)
    else:
        truths, source = fallback, "synthetic"
    rng = random.Random(seed)
    return [rng.choice(truths) for _ in range(n)], source


def rewrite(answer: str, rng: random.Random) -> str:
    """`answer` written differently but equal: what a correct model answer looks like."""
    number = parse_number(answer)
    if number is not None and not number.percent:
        value = number.value
        forms = [answer, f"x = {answer}"]
        if value.denominator != 1:
            forms.append(f"{value.numerator}/{value.denominator}")
            if 10**6 % value.denominator == 0:
                forms.append(f"{float(value):g}")
        elif abs(value) >= 1000:
            forms.append(f"{int(value):,}".replace(",", "{,}"))
        return rng.choice(forms)
    forms = [answer, answer.replace("\\frac", "\\dfrac"), answer.replace(",", ", "), answer.replace(" ", "")]
    if answer.startswith("(") and answer.endswith(")"):
        forms.append(f"\\left({answer[1:-1]}\\right)")
    return rng.choice(forms)


def wrong(answer: str, others: list[str], rng: random.Random) -> str:
    """An answer that is not `answer`: another problem's answer, or the number off by one."""
    number = parse_number(answer)
    if number is not None and number.value.denominator == 1 and rng.random() < 0.5:
        return str(number.value + rng.choice([-1, 1]))
    choice = rng.choice(others)
    return choice if choice != answer else f"{answer}+1"


def batch(truths: list[str], seed: int) -> list[str]:
    rng = random.Random(seed)
    answers = [rewrite(t, rng) if i % 2 == 0 else wrong(t, truths, rng) for i, t in enumerate(truths)]
    return [STYLES[i % 3].format(a) for i, a in enumerate(answers)]


def cpu_seconds(verifier) -> float:
    """CPU time used so far by this process and the verifier's worker processes (Linux /proc)."""
    total = time.process_time()
    pool = verifier._pool_holder.get("pool")
    for worker in pool._workers if pool is not None else []:
        try:
            fields = Path(f"/proc/{worker.process.pid}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except (OSError, IndexError, ValueError):
            return float("nan")
    return total


def measure(verifier, truths: list[str], repeats: int, seed: int) -> dict:
    verifier(batch(truths[:8], seed), truths[:8])  # start and warm the pool: once per training run
    rates, cpu_per_check = [], []
    for repeat in range(repeats):
        rng = random.Random(seed + 1 + repeat)
        sample = [rng.choice(truths) for _ in truths]
        responses = batch(sample, seed + 100 + repeat)
        start, cpu_start = time.perf_counter(), cpu_seconds(verifier)
        verifier(responses, sample)
        rates.append(len(responses) / (time.perf_counter() - start))
        cpu_per_check.append((cpu_seconds(verifier) - cpu_start) / len(responses))
    # On a loaded machine wall time says more about the other jobs; CPU time per check
    # does not, and 2 / (CPU s per check) is what 2 idle cores would sustain.
    cpu = statistics.median(cpu_per_check)
    return {"median_per_s": statistics.median(rates), "runs_per_s": rates, "cpu_ms_per_check": 1000 * cpu,
            "two_idle_cores_per_s": 2 / cpu if cpu > 0 else float("nan"), "stats": verifier.stats()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--workers", type=int, default=None, help="default: min(2, cpu count)")
    args = parser.parse_args()
    math_truths, math_source = ground_truths("test/math.parquet", ["\\frac{1}{2}", "3\\sqrt{2}", "(1, 2)", "12"],
                                             args.batch, seed=0)
    gsm_truths, gsm_source = ground_truths("test/gsm8k.parquet", [str(n) for n in range(1, 500)], args.batch, seed=1)
    results = {"machine": platform.platform(), "cpus": os.cpu_count(), "batch": args.batch, "repeats": args.repeats}
    with MathVerifier(num_workers=args.workers) as verifier:
        results["math"] = {"source": math_source, "workers": verifier.num_workers,
                           **measure(verifier, math_truths, args.repeats, seed=2)}
    with GSM8KVerifier() as verifier:
        results["gsm8k"] = {"source": gsm_source, **measure(verifier, gsm_truths, args.repeats, seed=3)}
    for name in ("math", "gsm8k"):
        print(f"{name}: {results[name]['median_per_s']:.0f} verifications/s (median of {args.repeats}, "
              f"batch {args.batch}, {results[name]['source']}); {results[name]['cpu_ms_per_check']:.2f} CPU ms "
              f"a check, i.e. {results[name]['two_idle_cores_per_s']:.0f}/s on 2 idle cores")
    out = REPO / "benchmarks" / "results" / "verifier_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
