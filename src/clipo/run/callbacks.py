"""Callbacks: the per-step history and the summary printed at the end of a run."""

from __future__ import annotations

import statistics
from typing import Any

import lightning as L


class RunSummary(L.Callback):
    """Keeps every metric logged by each RL step (validation aside), for the summary and reports."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        self.wandb_id: str | None = None  # a resumed run continues the same W&B run

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        from lightning.pytorch.loggers import WandbLogger

        wandb = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        self.wandb_id = str(wandb[0].version) if wandb else self.wandb_id

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        metrics = trainer.callback_metrics
        row = {k: float(v) for k, v in metrics.items() if not k.startswith("val/") and v.numel() == 1}
        self.history.append({"step": float(trainer.global_step), **row})

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "wandb_id": self.wandb_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))
        self.wandb_id = state.get("wandb_id")

    def series(self, key: str) -> list[float]:
        return [row[key] for row in self.history if key in row]


def _first_last(values: list[float], window: int = 3) -> str:
    """Mean of the first and of the last `window` steps (single steps are noisy)."""
    if not values:
        return "n/a"
    k = min(window, len(values))
    first, last = statistics.fmean(values[:k]), statistics.fmean(values[-k:])
    return f"{first:.3f} -> {last:.3f}  (mean of first/last {k} steps)"


def format_summary(
    summary: RunSummary,
    val_before: dict[str, float],
    val_after: dict[str, float],
    output_dir: str,
    checkpoint: str | None,
    export_dir: str | None,
) -> str:
    steps = len(summary.history)
    step_times = summary.series("time/step")
    gen_times = summary.series("time/generate")
    lines = [
        "",
        "=" * 72,
        "clipo run summary",
        "=" * 72,
        f"RL steps            {steps}",
        f"train reward        {_first_last(summary.series('train/reward'))}",
        f"train accuracy      {_first_last(summary.series('train/acc'))}",
    ]
    if step_times:
        share = statistics.median(gen_times) / max(statistics.median(step_times), 1e-9) if gen_times else 0.0
        lines.append(f"time per step       median {statistics.median(step_times):.1f} s ({share:.0%} generation)")
        tps = summary.series("perf/tokens_per_s")
        if tps:
            lines.append(f"generation          median {statistics.median(tps):.0f} tokens/s")
    shown = [k for k in sorted(set(val_before) | set(val_after)) if k.endswith("/acc") or k.startswith("val/gap/")]
    for key in shown:
        before = f"{val_before[key]:.3f}" if key in val_before else "  -  "
        after = f"{val_after[key]:.3f}" if key in val_after else "  -  "
        label = key.removeprefix("val/").removesuffix("/acc")
        label = f"robustness gap {label.removeprefix('gap/')}" if key.startswith("val/gap/") else f"held-out {label} accuracy"
        lines.append(f"{label:<44} {before} -> {after}")
    lines += [f"logs                {output_dir}"]
    if checkpoint:
        lines.append(f"checkpoint          {checkpoint}")
    if export_dir:
        lines.append(f"exported policy     {export_dir}  (transformers save_pretrained, head beside it)")
    lines.append("=" * 72)
    return "\n".join(lines)
