"""Hydra entry point: `python src/clipo/evaluate.py suite=track1 ckpt_path=...`.

Scores a clipo checkpoint (`ckpt_path`), an exported policy folder (`policy_path`) or the
model config's own weights (`model=hub model.name_or_path=...`) on the chosen sets, and
writes `results.md`, `results.csv`, `robustness.csv` and `responses.jsonl` into the run
folder. `evaluate(cfg)` is a plain function (tests call it); `main()` only wraps it.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script, src/clipo/ is first on sys.path and this file would shadow HF `evaluate`
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import csv
import json
import logging
import math
import os
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from clipo.builders import build_engine, build_verifier
from clipo.config import engine_problems
from clipo.data import build_dataset
from clipo.evaluation.scoring import (
    SetScores,
    eval_sampling,
    robustness_table,
    score_records,
    set_metrics,
    split_set_spec,
)
from clipo.models import is_adapter, load_model
from clipo.run.checkpointing import read_sharded_checkpoint
from clipo.run.integrity import checkpoint_problem

log = logging.getLogger(__name__)
PERCENT_PREFIXES = ("acc", "pass@", "maj@", "truncated")


def load_policy(cfg: DictConfig) -> tuple[torch.nn.Module, Any]:
    """The model to score: a checkpoint's policy (built from the model config saved in it), an exported
    folder, or the model config's own weights."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    if cfg.ckpt_path and cfg.policy_path:
        raise ValueError("set ckpt_path or policy_path, not both: each names the weights to score")
    if cfg.policy_path:
        if not Path(cfg.policy_path).is_dir():
            raise FileNotFoundError(f"policy_path={cfg.policy_path} is not a folder; pass the `policy` folder a "
                                    "training run exported (save_pretrained), or use ckpt_path for a .ckpt file")
        if problem := checkpoint_problem(Path(cfg.policy_path)):
            raise ValueError(f"policy_path={cfg.policy_path} is damaged: {problem}; export it again, or score a "
                             "checkpoint of the run instead (ckpt_path=<run>/checkpoints/last.ckpt)")
        model_cfg |= {"name_or_path": str(cfg.policy_path), "gguf_package": None, "gguf_file": None, "tiny": None}
    checkpoint = read_checkpoint(Path(cfg.ckpt_path)) if cfg.ckpt_path else None
    trained_with = ((checkpoint.get("clipo") or {}).get("config") or {}).get("model") if checkpoint else None
    if trained_with is not None:  # the weights fit only the model they were trained as
        if trained_with != model_cfg:
            log.info("ckpt_path: building model %s as saved in the checkpoint", trained_with.get("name"))
        model_cfg = trained_with
    model, tokenizer = load_model(**model_cfg, seed=cfg.seed)
    if checkpoint is not None:
        load_checkpoint_policy(model, Path(cfg.ckpt_path), checkpoint)
    return model, tokenizer


def read_checkpoint(path: Path) -> dict:
    """A clipo (Lightning) checkpoint file, or a DeepSpeed / FSDP checkpoint folder, on the CPU, verified first."""
    if not path.exists():
        raise FileNotFoundError(f"ckpt_path={path} does not exist; pass a <run>/checkpoints/*.ckpt file or folder, "
                                "or policy_path=<run>/policy")
    if problem := checkpoint_problem(path):
        raise ValueError(f"ckpt_path={path} is damaged: {problem}; score another checkpoint of the run "
                         "(save_top_k=-1 keeps checkpoints/step_*.ckpt) or its exported policy (policy_path=<run>/policy)")
    if path.is_dir():  # written by strategy=deepspeed_* or fsdp: their sharded formats
        return read_sharded_checkpoint(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint if isinstance(checkpoint, dict) else {}


def load_checkpoint_policy(model: torch.nn.Module, path: Path, checkpoint: dict | None = None) -> None:
    """Copy the `policy.` weights of a clipo checkpoint (read from `path` unless given) into `model`."""
    checkpoint = read_checkpoint(path) if checkpoint is None else checkpoint
    state = checkpoint.get("state_dict")
    policy = {k.removeprefix("policy."): v for k, v in (state or {}).items() if k.startswith("policy.")}
    if not policy:
        raise ValueError(f"{path} has no `policy.` weights in its state_dict; is it a clipo training checkpoint?")
    missing, unexpected = model.load_state_dict(policy, strict=False)
    if is_adapter(model):  # a LoRA checkpoint holds the adapter only; the frozen base comes from the model files
        missing = [k for k in missing if "lora_" in k]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit model={model.config.model_type} ({len(missing)} missing, "
                         f"{len(unexpected)} unexpected weights, e.g. {(missing + unexpected)[:3]}); "
                         "evaluate with the model config the run trained with (e.g. model=tiny)")


def chosen_sets(cfg: DictConfig) -> dict[str, dict]:
    sets = OmegaConf.to_container(cfg.sets, resolve=True) or {}
    if not sets:
        raise ValueError("no sets to evaluate; pick a suite (suite=track1, track2, all, arith) or add one with "
                         "'~suite' +benchmark@sets.<name>=<name>")
    only = list(cfg.only) if cfg.only else list(sets)
    unknown = [name for name in only if name not in sets]
    if unknown:
        raise ValueError(f"only={unknown} names sets outside the suite; choose from {list(sets)} or change suite=")
    return {name: sets[name] for name in only}


def load_records(name: str, dataset_kwargs: dict, max_rows: int | None, verifier: Any) -> list[dict]:
    dataset = build_dataset(**dataset_kwargs)
    records = [dataset[i] for i in range(len(dataset) if max_rows is None else min(max_rows, len(dataset)))]
    if not records:
        raise ValueError(f"set {name!r} has no records")
    verifier.validate_ground_truths([r["ground_truth"] for r in records], [name] * len(records),
                                    [r.get("index", i) for i, r in enumerate(records)])
    return records


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score every chosen set; returns `{"sets": {name: metrics}, "average", "gaps", "output_dir"}`."""
    import clipo.verifiers  # noqa: F401  (registers the verifiers)

    L.seed_everything(cfg.seed, verbose=False)
    specs = {name: split_set_spec(spec, use_hub=cfg.hub) for name, spec in chosen_sets(cfg).items()}
    unscored = [name for name, (_, kind, _) in specs.items() if kind is None]
    if unscored:  # before the model loads
        raise ValueError(f"set(s) {', '.join(unscored)} name no verifier; add `verifier:` (math, choice or gsm8k) "
                         "to their spec")
    if problems := engine_problems(cfg.rollout, cfg.model):
        raise ValueError("; ".join(problems))
    model, tokenizer = load_policy(cfg)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    model.to(device)
    engine, _ = build_engine(cfg, model, tokenizer)
    sampling = eval_sampling(cfg.n, cfg.temperature, cfg.top_p, cfg.max_new_tokens)
    verifiers = {kind: build_verifier(cfg, kind) for kind in sorted({v for _, v, _ in specs.values()})}
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    per_set, all_scores = {}, {}
    try:
        for name, (dataset_kwargs, kind, _) in specs.items():
            records = load_records(name, dataset_kwargs, cfg.max_rows, verifiers[kind])
            scores = score_records(engine, records, verifiers[kind], sampling, cfg.n, cfg.batch_size, desc=name)
            per_set[name], all_scores[name] = set_metrics(scores, cfg.ks), scores
            log.info("%s: acc %.4f over %d problems", name, per_set[name]["acc"], len(records))
    finally:
        for verifier in verifiers.values():
            verifier.close()
    robustness = robustness_table(per_set, {name: twins for name, (_, _, twins) in specs.items()}, cfg.gap_metric)
    write_results(output_dir, per_set, robustness, all_scores if cfg.save_responses else None)
    print(format_markdown(per_set, robustness))
    print(f"results written to {output_dir}")
    return {"sets": per_set, "average": robustness["average"], "gaps": robustness["gaps"], "output_dir": output_dir}


def _cell(column: str, value: float) -> str:
    if column == "problems":
        return str(int(value))
    return f"{100 * value:.1f}" if column.startswith(PERCENT_PREFIXES) else f"{value:.1f}"


def _percent_or_dash(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}"  # no relative drop from a zero accuracy


def format_markdown(per_set: dict[str, dict[str, float]], robustness: dict) -> str:
    """One row per set and an average row (metrics in %), then the robustness gaps (percentage points)."""
    columns = list(next(iter(per_set.values())))
    rows = [f"| set | {' | '.join(columns)} |", "|---" * (len(columns) + 1) + "|"]
    rows += [f"| {name} | {' | '.join(_cell(c, m[c]) for c in columns)} |" for name, m in per_set.items()]
    average = robustness["average"]
    rows.append(f"| average | {' | '.join(_cell(c, average[c]) if c in average else '' for c in columns)} |")
    if robustness["gaps"]:
        metric = robustness["metric"]
        rows += ["", f"| set | twin | {metric} set | {metric} twin | gap (points) | relative drop (%) |", "|---" * 6 + "|"]
        rows += [f"| {s} | {t} | {100 * g['original']:.1f} | {100 * g['perturbed']:.1f} | {100 * g['gap']:.1f} | "
                 f"{_percent_or_dash(g['relative_drop'])} |" for (s, t), g in robustness["gaps"].items()]
    return "\n".join(rows) + "\n"


def write_results(output_dir: Path, per_set: dict, robustness: dict, scores: dict[str, SetScores] | None) -> None:
    (output_dir / "results.md").write_text(format_markdown(per_set, robustness))
    columns = list(next(iter(per_set.values())))
    with open(output_dir / "results.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["set", *columns])
        writer.writerows([name, *(m[c] for c in columns)] for name, m in per_set.items())
        writer.writerow(["average", *(robustness["average"].get(c, "") for c in columns)])
    with open(output_dir / "robustness.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["set", "twin", "original", "perturbed", "gap", "relative_drop"])
        writer.writerows([s, t, g["original"], g["perturbed"], g["gap"], g["relative_drop"]]
                         for (s, t), g in robustness["gaps"].items())
    if scores is not None:
        with open(output_dir / "responses.jsonl", "w") as file:
            file.writelines(json.dumps(row) + "\n" for row in response_rows(scores))


def response_rows(scores: dict[str, SetScores]):
    """One dict per response: set, index, sample, response, answer, ground_truth, correct."""
    for name, s in scores.items():
        for p, (index, truth) in enumerate(zip(s.indices, s.ground_truths)):
            for k, response in enumerate(s.responses[p]):
                yield {"set": name, "index": index, "sample": k, "response": response, "answer": s.answers[p][k],
                       "ground_truth": truth, "correct": bool(s.correct[p, k])}


@hydra.main(version_base="1.3", config_path="../../configs", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    try:
        results = evaluate(cfg)
    except (ValueError, FileNotFoundError) as error:
        log.error(str(error))
        raise SystemExit(2) from None
    return results["average"].get("acc")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
