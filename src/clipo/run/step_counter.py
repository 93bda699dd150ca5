"""A step is an RL step: `trainer.global_step` advances once per rollout batch.

Under manual optimization Lightning counts optimizer steps: every `LightningOptimizer.step()`
increments `fit_loop.epoch_loop.manual_optimization.optim_step_progress`, and `global_step` reads
it. An RL step makes `ppo.epochs x (rollouts / mini_batch_size)` updates (or none during CLIPO's
head warm-up), so `trainer.max_steps`, `callbacks.model_checkpoint.every_n_train_steps`, the
summary's step and anything else that reads `global_step` would count updates. `RLStepCounter`
lets the updates go through Lightning as before (precision plugins, DeepSpeed's engine step) and
then sets the progress so that the whole RL step counts once; the updates are counted separately.
The progress is part of Lightning's loop state, so checkpoints and resume see RL steps too.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator


class RLStepCounter:
    """Counts one `global_step` per RL step; `updates` holds the optimizer updates over the run."""

    def __init__(self) -> None:
        self.updates = 0

    @contextmanager
    def step(self, trainer: Any) -> Iterator[None]:
        """Wrap one RL step (a `training_step`). With no trainer attached it only runs the body."""
        progress = _optimizer_progress(trainer)
        before = None if progress is None else progress.total.completed
        yield
        if progress is None:
            return
        taken = progress.total.completed - before  # optimizer steps inside the RL step
        self.updates += taken
        surplus = taken - 1  # -1 when no update was made: the RL step still counts
        for tracker in (progress.total, progress.current):
            tracker.ready -= surplus
            tracker.completed -= surplus

    def state_dict(self) -> dict[str, int]:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.updates = int(state.get("updates", 0))


def _optimizer_progress(trainer: Any) -> Any:
    """The manual-optimization step progress, or None outside a fit (e.g. a module called directly)."""
    try:
        return trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
    except (AttributeError, RuntimeError):
        return None
