"""The largest difference between each clipo part and its reference, over the tests' cases and seeds.

    PYTHONPATH=src python -m tests.references.report

Prints a Markdown table (part, reference, cases, max |difference| of the loss or advantage, of the
gradient); the README's algorithm table quotes it. It runs the comparisons of
tests/algorithms/test_trl_reference.py, test_verl_reference.py and tests/advantages/test_references.py.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from clipo.algorithms.rollout_correction import importance_weights
from tests.advantages import test_references as adv
from tests.algorithms import test_trl_reference as trl
from tests.algorithms import test_verl_reference as verl
from tests.references.inputs import policy_batch
from tests.references.trl import trl_sampler_ratio


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def loss_rows() -> dict[tuple[str, str], list[float]]:
    rows: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0.0])

    def add(key, theirs, ours):
        row = rows[key]
        row[0] += 1
        row[1], row[2] = max(row[1], _diff(ours[0], theirs[0])), max(row[2], _diff(ours[1], theirs[1]))

    for seed in trl.SEEDS:
        for case, (settings, config, _) in trl.CASES.items():
            sampler = case == "off_policy_mask"
            key = (f"{config['name']} ({case})", f"TRL loss_type={settings['loss_type']}")
            add(key, *trl.run_both(case, seed, sampler))
        for mode in ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask"):
            b = policy_batch(seed)
            level, kind = mode.split("_")
            ratio = trl_sampler_ratio(b.old, b.sampling, b.mask.long(), mode, 0.5, 3.0)
            weights, _ = importance_weights(b.old, b.sampling, b.mask, 3.0, level, kind, min_ratio=0.5)
            add(("rollout.importance_sampling", f"TRL {mode}"), *trl.run_both("dapo", seed, token_weights=weights,
                                                                                trl_ratio=ratio))
        for name, aggregation in verl.PAIRS:
            theirs, ours, _ = verl.run_both(name, aggregation, seed)
            add((name, f"verl {verl.CASES[name][0]}"), theirs, ours)
        for name in ("grpo", "cispo", "dppo_kl", "sapo"):
            theirs, ours, _ = verl.run_both(name, verl.FIXED_AGGREGATION.get(name, "token-mean"), seed, weighted=True)
            add((f"{name} + sampler weights", "verl rollout_is_weights"), theirs, ours)
    return rows


def advantage_rows() -> dict[tuple[str, str], list[float]]:
    rows: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, float("nan")])
    for seed in adv.SEEDS:
        for binary in (True, False):
            rewards, groups, lengths = adv.batch(seed, binary)
            for case, ((name, settings), (verl_name, kwargs)) in adv.VERL_CASES.items():
                if kwargs.get("config") is not None:
                    kwargs = {**kwargs, "config": adv.algo_config(norm_adv_by_std_in_grpo=kwargs["config"] == "norm")}
                theirs = adv.verl_estimator(verl_name, rewards, groups, lengths, index=adv.index_of(groups), **kwargs)
                got = adv.ours(name, rewards, groups, lengths, **settings)
                keep = ~adv.equal_groups(rewards, groups) if case in adv.WHITENED else torch.ones_like(groups).bool()
                row = rows[(f"advantage={name} {settings or ''}".strip(), f"verl {verl_name}")]
                row[0], row[1] = row[0] + 1, max(row[1], _diff(got[keep], theirs[keep]))
            for case, ((name, settings), scale) in adv.TRL_CASES.items():
                theirs = adv.trl_advantages(rewards.unsqueeze(-1), torch.ones(1), adv.G, scale)
                row = rows[(f"advantage={name} {settings or ''}".strip(), f"TRL scale_rewards={scale}")]
                got = adv.ours(name, rewards, groups, lengths, **settings)
                row[0], row[1] = row[0] + 1, max(row[1], _diff(got, theirs))
        rewards, groups, lengths = adv.batch(seed, binary=False)
        theirs = adv.verl_estimator("reinforce_plus_plus", rewards, groups, lengths, config=adv.algo_config(gamma=1.0))
        got = adv.ours("reinforce_pp", rewards, groups, lengths, baseline="none", whiten_over="tokens")
        row = rows[("advantage=reinforce_pp baseline=none whiten_over=tokens", "verl reinforce_plus_plus")]
        row[0], row[1] = row[0] + 1, max(row[1], _diff(got, theirs))
    return rows


def main() -> None:
    print("| part | reference | cases | max abs diff (value) | max abs diff (gradient) |")
    print("|---|---|---|---|---|")
    for (part, reference), (cases, value, grad) in {**loss_rows(), **advantage_rows()}.items():
        grad_text = "-" if grad != grad else f"{grad:.1e}"
        print(f"| {part} | {reference} | {cases} | {value:.1e} | {grad_text} |")


if __name__ == "__main__":
    main()
