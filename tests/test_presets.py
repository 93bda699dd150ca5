"""The paper's presets equal the official scripts number for number, and the schedule they set
(updates per RL step, head warm-up, validation every k RL steps) runs as the official trainer's.

The official values are written here from the official code (Qwen-Applications/CLIPO,
scripts/train_gsm8k.sh, scripts/train_math.sh, and the verl 0.6 defaults they rely on), not read
from clipo's YAML: verl's `ppo_mini_batch_size` counts prompts, clipo's `ppo.mini_batch_size`
counts rollouts (prompts x rollout.n).
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from clipo.compose import compose
from clipo.train import train
from tests.conftest import tiny_parity_config

TRACK1_SETS = {"gsm8k", "gsm_p1", "gsm_p2", "gsm_symbolic", "theoremqa", "mmlu2k", "truthfulqa", "commonsense_qa"}
TRACK2_SETS = {"math", "aime", "aime2025", "amc", "math_perturb_simple", "math_perturb_hard"}
# key -> official value; "mini_prompts" is verl's ppo_mini_batch_size (prompts)
TRACK1 = {
    "model": "Qwen/Qwen2.5-3B-Instruct", "train": "gsm8k.parquet", "prompts": 512, "n": 16, "mini_prompts": 256,
    "response": 2048, "epochs": 6, "test_freq": 7, "val_sets": TRACK1_SETS, "val_n": 1, "val_greedy": True,
    "head_dim": 512, "warmup": 14,
}
TRACK2 = {
    "model": "Qwen/Qwen2.5-7B-Instruct", "train": "math75.parquet", "prompts": 128, "n": 16, "mini_prompts": 128,
    "response": 4096, "epochs": 10, "test_freq": 29, "val_sets": TRACK2_SETS, "val_n": 16, "val_greedy": False,
    "head_dim": 2048, "warmup": 58,
}
PRESETS = {
    "track1_grpo": (TRACK1, False), "track1_clipo": (TRACK1, True), "track1_dapo_clipo": (TRACK1, True),
    "track2_grpo": (TRACK2, False), "track2_clipo": (TRACK2, True),
}


@pytest.mark.parametrize("name,base", [("track1_conspo", "track1_grpo"), ("track1_conspo_clipo", "track1_clipo")])
def test_conspo_presets_change_only_the_objective(name, base):
    cfg, reference = compose([f"experiment={name}"]), compose([f"experiment={base}"])
    # the ConSPO paper's tau 10, margin 0.01, alpha 0.3 over Track I's 84 RL steps (7473 // 512 = 14 x 6 epochs)
    assert dict(cfg.algorithm) == {**dict(compose(["algorithm=conspo"]).algorithm), "total_steps": 84,
                                   "kl_coef": 0.001, "kl_estimator": "k3"}
    assert (cfg.algorithm.tau, cfg.algorithm.margin, cfg.algorithm.alpha) == (10.0, 0.01, 0.3)
    for key in ("model", "data", "rollout", "ppo", "optimizer", "validation", "trainer", "loss", "head", "contrastive"):
        assert cfg[key] == reference[key], key
    assert cfg.ppo.micro_batch_size % cfg.rollout.group_size == 0  # whole groups a forward


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_composes_to_the_official_numbers(name):
    official, clipo = PRESETS[name]
    cfg = compose([f"experiment={name}"])
    assert cfg.model.name_or_path == official["model"] and cfg.data.train.path.endswith(official["train"])
    assert cfg.data.prompts_per_step == official["prompts"] and cfg.rollout.group_size == official["n"]
    # updates per RL step: Track I 512 x 16 / (256 x 16) = 2, Track II 128 x 16 / (128 x 16) = 1
    assert cfg.ppo.mini_batch_size == official["mini_prompts"] * official["n"]
    assert cfg.ppo.epochs == 1 and cfg.ppo.max_grad_norm == 1.0  # verl: ppo_epochs=1, optim.clip_grad=1.0
    assert cfg.rollout.max_new_tokens == official["response"]
    assert cfg.rollout.temperature == 1.0 and cfg.rollout.top_p == 1.0 and cfg.rollout.top_k == 0
    # verl's actor AdamW: lr 1e-6 (the scripts), weight decay 0.01, betas (0.9, 0.999); constant lr
    assert cfg.optimizer._target_ == "torch.optim.AdamW" and cfg.optimizer.lr == 1e-6
    assert cfg.optimizer.weight_decay == 0.01 and list(cfg.optimizer.betas) == [0.9, 0.999]
    # GRPO advantage; clip 0.2 (DAPO: clip-higher 0.28), dual clip 3.0; token-mean; KL loss low_var_kl 0.001
    assert cfg.advantage.name == "grpo"
    assert cfg.algorithm.clip_low == 0.2 and cfg.algorithm.clip_high == (0.28 if "dapo" in name else 0.2)
    assert cfg.algorithm.clip_c == 3.0 and cfg.algorithm.aggregation == "token-mean"
    assert cfg.algorithm.kl_coef == 0.001 and cfg.algorithm.kl_estimator == "k3"
    # validation: before training (val_before_train) and every test_freq RL steps, on the official sets
    assert set(cfg.data.val) == official["val_sets"]
    assert cfg.validation.before_training is True
    assert cfg.trainer.val_check_interval == official["test_freq"] and cfg.trainer.check_val_every_n_epoch is None
    assert cfg.validation.max_new_tokens == official["response"] and cfg.validation.n == official["val_n"]
    if official["val_greedy"]:  # do_sample=False
        assert cfg.validation.temperature == 0.0
    else:  # do_sample=True, temperature 0.6, top-p 0.95: mean@16
        assert cfg.validation.temperature == 0.6 and cfg.validation.top_p == 0.95
    assert cfg.trainer.max_epochs == official["epochs"] and cfg.trainer.max_steps == -1
    if not clipo:
        assert cfg.loss.name == "none"
        return
    # CLIPO: infonce over the mean of final-layer states, linear head, tau 0.05, lambda 0.2, the
    # reward clamped at -0.5, the head's own AdamW (lr 1e-3, weight decay 0.01), critic_warmup
    assert cfg.loss.name == "infonce" and cfg.loss.temperature == 0.05 and cfg.loss.level == "group"
    assert cfg.loss.anchors == "correct" and cfg.loss.skip_trivial is True
    assert cfg.pooler.name == "mean" and cfg.rollout.hidden_layer == -1
    assert cfg.head.name == "linear" and cfg.head.dim == official["head_dim"]
    assert cfg.contrastive.mode == "reward" and cfg.contrastive.lam == 0.2
    assert cfg.contrastive.c == 0.0 and cfg.contrastive.floor == -0.5
    assert cfg.contrastive.head_pooler_optimizer.lr == 1e-3 and cfg.contrastive.head_pooler_optimizer.weight_decay == 0.01
    assert cfg.contrastive.head_warmup_steps == official["warmup"]


class Schedule(L.Callback):
    """Per RL step: the policy optimizer's `step` calls and whether the policy's weights changed;
    and at which RL step each validation ran."""

    def __init__(self) -> None:
        self.updates: list[int] = []
        self.policy_changed: list[bool] = []
        self.validations: list[tuple[str, int]] = []
        self._calls = 0

    def on_train_start(self, trainer, module) -> None:
        optimizer = trainer.optimizers[0]
        step = optimizer.step

        def counted(*args, **kwargs):
            self._calls += 1
            return step(*args, **kwargs)

        optimizer.step = counted

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._calls = 0
        self._before = [p.detach().clone() for p in module.policy.parameters()]

    def on_train_batch_end(self, trainer, module, *args) -> None:
        self.updates.append(self._calls)
        self.policy_changed.append(any(not torch.equal(a, p) for a, p in zip(self._before, module.policy.parameters())))

    def on_validation_start(self, trainer, module) -> None:
        self.validations.append((trainer.state.fn.value, module.rl_step))


def _run(tmp_path, *overrides):
    cfg = tiny_parity_config(tmp_path, *overrides)
    with open_dict(cfg):
        cfg.callbacks.schedule = {"_target_": f"{__name__}.Schedule"}
    _, objects = train(cfg)
    return next(c for c in objects["trainer"].callbacks if isinstance(c, Schedule)), objects


@pytest.mark.parametrize("mini, updates", [(8, 2), (16, 1)])
def test_updates_per_rl_step_follow_the_rollout_counted_mini_batch(tmp_path, parity_verifier, mini, updates):
    # Track I scaled down: 4 prompts x 4 rollouts, mini-batch 2 prompts = 8 rollouts -> 2 updates;
    # Track II: mini-batch = the whole 16 rollouts -> 1 update
    schedule, objects = _run(
        tmp_path, "data.prompts_per_step=4", "rollout.group_size=4", f"ppo.mini_batch_size={mini}",
        "ppo.micro_batch_size=4", "trainer.max_steps=2", "data.val=null", "loss=none",
    )
    assert schedule.updates == [updates, updates]
    assert objects["trainer"].global_step == 2  # trainer steps count RL steps, whatever the updates per step


def test_the_policy_first_changes_at_the_step_the_official_trainer_updates(tmp_path, parity_verifier):
    # critic_warmup=3: verl updates the actor when 3 <= global_steps (from 1): steps 1-2 head only
    schedule, objects = _run(tmp_path, "contrastive.head_warmup_steps=3", "trainer.max_steps=4", "data.val=null")
    assert schedule.policy_changed == [False, False, True, True]
    assert schedule.updates == [0, 0, 1, 1]
    assert objects["module"].head_step.optimizer.state_dict()["state"][0]["step"] == 4  # the head trained every step


def test_validation_runs_before_training_and_every_k_rl_steps_not_optimizer_updates(tmp_path, parity_verifier):
    # 2 optimizer updates per RL step, val_check_interval=2: after RL steps 2 and 4 (optimizer updates
    # would have put them after RL steps 1, 2, 3, 4)
    schedule, _ = _run(
        tmp_path, "data.prompts_per_step=2", "rollout.group_size=2", "ppo.mini_batch_size=2", "ppo.micro_batch_size=2",
        "rollout.max_new_tokens=4", "trainer.max_steps=4", "trainer.val_check_interval=2",
        "validation.before_training=true", "validation.max_new_tokens=2", "loss=none",
    )
    assert schedule.updates == [2, 2, 2, 2]
    fit = [step for fn, step in schedule.validations if fn == "fit"]
    assert fit == [2, 4]
    # before training (train.py); fit's pass after the last step is the final one, not run twice
    assert schedule.validations == [("validate", 0), ("fit", 2), ("fit", 4)]


@pytest.mark.parametrize("mode", ["reward", "loss"])
def test_training_pools_the_response_token_states_in_both_modes(tmp_path, parity_verifier, monkeypatch, mode):
    """The module hands poolers `hidden_mask` (response tokens 0..L-2), not the response mask: the
    last row of `hidden` (the last token, which has no state while sampling) is never pooled."""
    from clipo.contrastive.poolers import MeanPooler

    calls = []
    pool = MeanPooler.pool
    monkeypatch.setattr(MeanPooler, "pool", lambda self, hidden, mask: (calls.append(mask), pool(self, hidden, mask))[1])
    _run(tmp_path, f"contrastive.mode={mode}", "trainer.max_steps=1", "data.val=null")
    assert calls
    for mask in calls:
        assert not mask[:, -1].any()
        assert torch.equal(mask, mask.cummin(dim=1).values)  # a prefix of each row
    assert any(int(mask.sum(-1).max()) == mask.shape[1] - 1 for mask in calls)  # a full-length rollout: L-1 rows
