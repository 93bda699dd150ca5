"""Every config composes, names match files and registries, and bad configs fail early and clearly."""

import re
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from clipo.config import ConfigError, validate_config
from clipo.registry import ADVANTAGES, ALGORITHMS, HEADS, LOSSES, POOLERS, VERIFIERS, register_components
from tests.conftest import CONFIG_DIR, TINY_OVERRIDES, compose_config

REGISTERED_GROUPS = {
    "advantage": ADVANTAGES,
    "algorithm": ALGORITHMS,
    "verifier": VERIFIERS,
    "pooler": POOLERS,
    "head": HEADS,
    "loss": LOSSES,
}
GROUPS = ["model", "data", "sampling", *REGISTERED_GROUPS, "trainer", "strategy", "logger", "callbacks", "experiment", "debug"]


def _resolve(cfg) -> dict:
    """Resolve every interpolation of the job config (the hydra node is read-only)."""
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def test_default_config_composes_and_validates(tmp_path):
    cfg = compose_config(output_dir=tmp_path)
    assert cfg.model.name == "smollm2_135m" and cfg.loss.name == "infonce" and cfg.pooler.name == "mean"
    validate_config(cfg)
    _resolve(cfg)  # every interpolation resolves


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes(group, option, tmp_path):
    cfg = compose_config([f"{group}={option}"], output_dir=tmp_path)
    _resolve(cfg)
    if group in REGISTERED_GROUPS:
        register_components()
        assert cfg[group].name == option, f"configs/{group}/{option}.yaml must say name: {option}"
        assert option in REGISTERED_GROUPS[group], f"{option} is not registered in {REGISTERED_GROUPS[group]}"


def test_every_registered_name_has_a_config():
    register_components()
    for group, registry in REGISTERED_GROUPS.items():
        assert set(registry.names()) <= set(_options(group)), f"configs/{group} lacks {set(registry.names()) - set(_options(group))}"


def test_algorithm_dapo_brings_its_sampling_tricks_and_any_algorithm_can_use_them(tmp_path):
    assert not compose_config(output_dir=tmp_path).sampling.dynamic
    dapo = compose_config(["algorithm=dapo"], output_dir=tmp_path)
    assert dapo.sampling.dynamic and "dynamic" not in dapo.algorithm  # the loss holds only loss settings
    assert not compose_config(["algorithm=dapo", "sampling=none"], output_dir=tmp_path).sampling.dynamic
    assert compose_config(["algorithm=gspo", "sampling=dapo"], output_dir=tmp_path).sampling.dynamic


def test_sampling_tricks_are_checked(tmp_path):
    errors = _errors(["sampling.overlong_buffer=13", "sampling.max_refill_batches=-1"], tmp_path)
    assert "sampling.overlong_buffer=13 must lie in 0..rollout.max_new_tokens=12" in errors
    assert "sampling.max_refill_batches=-1 must be >= 0" in errors


def test_unknown_engine_lists_the_choices(tmp_path):
    assert "rollout.engine='nope' is not a registered rollout engine; choose one of: hf" in _errors(
        ["rollout.engine=nope"], tmp_path
    )


def _errors(overrides, tmp_path) -> str:
    cfg = compose_config(TINY_OVERRIDES + overrides, output_dir=tmp_path)
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    return str(info.value)


def test_batch_not_a_multiple_of_group_size(tmp_path):
    message = _errors(["ppo.mini_batch_size=6"], tmp_path)  # groups of 4
    assert "ppo.mini_batch_size=6 is not a multiple of rollout.group_size=4" in message


def test_mini_batch_must_divide_the_step(tmp_path):
    message = _errors(["data.prompts_per_step=3", "ppo.mini_batch_size=8"], tmp_path)
    assert "does not divide the 12 rollouts of a step" in message


def test_unknown_names_list_the_choices(tmp_path):
    message = _errors(["algorithm.kl_estimator=k9", "loss.name=nce"], tmp_path)
    assert "algorithm.kl_estimator='k9' is unknown; choose one of: k1, k2, k3" in message
    assert "loss.name='nce' is not a registered contrastive loss; choose one of:" in message and "supcon" in message


def test_reward_mode_needs_a_loss(tmp_path):
    assert "loss=none (plain RLVR)" in _errors(["loss=none", "contrastive.mode=reward"], tmp_path)
    validate_config(compose_config(TINY_OVERRIDES + ["loss=none"], output_dir=tmp_path))  # the baseline is fine


def test_missing_data_file(tmp_path):
    message = _errors(["+data.train.path=/nonexistent/train.parquet"], tmp_path)
    assert "data.train.path=/nonexistent/train.parquet does not exist" in message and "CLIPO_BENCH_DIR" in message


def test_all_problems_reported_together(tmp_path):
    overrides = ["data.prompts_per_step=3", "ppo.mini_batch_size=6", "ppo.micro_batch_size=2", "algorithm.kl_estimator=k9"]
    message = _errors(overrides, tmp_path)  # 12 rollouts in groups of 4: only 6 % 4 is wrong
    assert message.count("\n  - ") == 2


def test_evaluation_set_without_a_verifier(tmp_path):
    message = _errors(["~data.val.arith_p1.verifier", "data.val.arith.twins=[arith_p9]"], tmp_path)
    assert "data.val.arith_p1 has no verifier" in message and "gsm8k" in message
    assert "data.val.arith.twins names 'arith_p9'" in message
    assert "data.val.arith.verifier='regex' is not a registered verifier" in _errors(["data.val.arith.verifier=regex"],
                                                                                     tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is for machines without CUDA")
def test_deepspeed_offload_without_cuda_says_what_to_use(tmp_path):
    assert "use strategy=deepspeed_zero3" in _errors(["strategy=deepspeed_zero3_offload"], tmp_path)


def test_devices_and_a_train_set_smaller_than_one_step(tmp_path):
    message = _errors(["trainer.devices=0", "trainer.num_nodes=0", "data.train.size=1"], tmp_path)
    assert "trainer.devices=0 must be a positive count" in message and "trainer.num_nodes=0" in message
    assert "data.train.size=1 is smaller than one step's data.prompts_per_step=2" in message


def test_global_batches_split_over_processes(tmp_path):
    message = _errors(["trainer.devices=4", "trainer.num_nodes=2", "data.prompts_per_step=6"], tmp_path)
    assert "data.prompts_per_step=6 (the global batch) does not split over 8 processes" in message
    message = _errors(["trainer.devices=2", "ppo.mini_batch_size=4", "ppo.micro_batch_size=4"], tmp_path)
    assert "ppo.mini_batch_size=4 is not a multiple of rollout.group_size=4 x 2 processes" in message
    message = _errors(["trainer.devices=2", "data.prompts_per_step=4", "ppo.mini_batch_size=8", "ppo.micro_batch_size=3"],
                      tmp_path)
    assert "ppo.micro_batch_size=3 does not divide ppo.mini_batch_size=8 (its 4 rollouts per process)" in message
    validate_config(compose_config(TINY_OVERRIDES + ["trainer.devices=2", "ppo.micro_batch_size=2"], output_dir=tmp_path))


def test_loss_mode_needs_whole_groups_in_a_micro_batch(tmp_path):
    overrides = ["loss=infonce", "contrastive.mode=loss", "ppo.micro_batch_size=2"]  # groups of 4
    assert "ppo.micro_batch_size=2 splits groups of rollout.group_size=4" in _errors(overrides, tmp_path)
    validate_config(compose_config(TINY_OVERRIDES + overrides[:1] + ["ppo.micro_batch_size=2"], output_dir=tmp_path))


def test_conspo_needs_whole_groups_in_a_micro_batch(tmp_path):
    # ConSPO contrasts a group's rollouts in each forward (its `needs_whole_groups`), as loss mode does
    text = _errors(["algorithm=conspo", "loss=none", "ppo.micro_batch_size=2"], tmp_path)
    assert "ppo.micro_batch_size=2 splits groups of rollout.group_size=4, and algorithm=conspo compares" in text
    text = _errors(["algorithm=conspo", "loss=none", "ppo.max_tokens_per_micro_batch=20"], tmp_path)
    assert "(algorithm=conspo packs whole groups)" in text
    validate_config(compose_config(TINY_OVERRIDES + ["algorithm=conspo", "loss=none"], output_dir=tmp_path))


def test_reward_funcs_that_do_not_import_fail_before_the_model_loads(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def brevity(prompts, completions, **kw):\n    return [0.0] * len(completions)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)  # another test's module of that name
    cfg = compose_config(TINY_OVERRIDES + ["reward_funcs=[verifier,my_rewards:brevity]", "reward_weights=[1.0,0.5]"],
                         output_dir=tmp_path)
    validate_config(cfg)
    text = _errors(["reward_funcs=[verifier,my_rewardz:brevity]"], tmp_path)
    assert "module 'my_rewardz' does not import" in text
    text = _errors(["reward_funcs=[verifier,my_rewards:brevity]", "reward_weights=[1.0]"], tmp_path)
    assert "reward_weights=[1.0] needs one number per reward_funcs entry (2" in text
    assert "reward_timeout_s=-5 must be a positive number" in _errors(["reward_timeout_s=-5"], tmp_path)
    text = _errors([f"reward_funcs=[verifier,{tmp_path}/no_model]"], tmp_path)  # a folder that is not there
    assert f"reward model folder '{tmp_path}/no_model' does not exist" in text


def test_rollout_log_and_lora_settings_are_checked(tmp_path):
    text = _errors(["logging.rollouts_every_n_steps=-1", "logging.rollouts_max_rows_per_step=0"], tmp_path)
    assert "logging.rollouts_every_n_steps=-1 must be an integer >= 0" in text
    assert "logging.rollouts_max_rows_per_step=0 must be an integer >= 1" in text
    assert "model.lora_rank=-2 must be an integer >= 0" in _errors(["model.lora_rank=-2"], tmp_path)
    assert "model.lora_alpha=0 must be > 0" in _errors(["model.lora_rank=8", "model.lora_alpha=0"], tmp_path)
    text = _errors(["model.lora_rank=8", "model.lora_target_modules=qkv"], tmp_path)
    assert "model.lora_target_modules=qkv must be all-linear or a list" in text


def test_token_budget_must_hold_the_longest_rollout(tmp_path):
    # tiny overrides: max_new_tokens as below, groups of 4; a budget replaces micro_batch_size's checks
    cfg = compose_config(TINY_OVERRIDES, output_dir=tmp_path)
    new = cfg.rollout.max_new_tokens
    message = _errors([f"ppo.max_tokens_per_micro_batch={new}", "ppo.micro_batch_size=3"], tmp_path)
    assert f"ppo.max_tokens_per_micro_batch={new} is smaller than the longest possible micro-batch unit: one rollout" in message
    assert "micro_batch_size=3" not in message  # ignored when a token budget is set
    loss_mode = ["loss=infonce", "contrastive.mode=loss", f"ppo.max_tokens_per_micro_batch={2 * (new + 1)}"]
    assert "a group of rollout.group_size=4 rollouts" in _errors(loss_mode, tmp_path)
    validate_config(compose_config(TINY_OVERRIDES + [f"ppo.max_tokens_per_micro_batch={new + 1}"], output_dir=tmp_path))
    validate_config(compose_config(TINY_OVERRIDES + loss_mode[:2] + [f"ppo.max_tokens_per_micro_batch={4 * (new + 1)}"],
                                   output_dir=tmp_path))


def test_forward_layout_takes_auto_or_a_layout(tmp_path):
    message = _errors(["ppo.forward_layout=packed"], tmp_path)
    assert "ppo.forward_layout='packed': use one of auto, varlen, shared_prompt, padded" in message
    for value in ("auto", "varlen", "shared_prompt", "padded"):
        validate_config(compose_config(TINY_OVERRIDES + [f"ppo.forward_layout={value}"], output_dir=tmp_path))


def test_vllm_kv_cache_size_is_checked(tmp_path):
    message = _errors(["rollout.engine=vllm", "rollout.vllm.kv_cache_gib=0"], tmp_path)
    assert "rollout.vllm.kv_cache_gib=0: give a size in GiB > 0 (e.g. 0.5) or auto" in message


@pytest.mark.parametrize("override", ["optimizer.lr=-1e-5", "optimizer.lr=0", "contrastive.head_pooler_optimizer.lr=0"])
def test_learning_rate_must_be_positive(tmp_path, override):
    # before: a negative rate failed inside torch.optim after the model was built ("Invalid learning rate")
    with pytest.raises(ConfigError, match=rf"{override.split('=')[0]}=.* must be a positive number"):
        validate_config(compose_config([*TINY_OVERRIDES, override], output_dir=tmp_path))


@pytest.mark.parametrize("override, meant", [
    ("+rollout.grup_size=4", "rollout.group_size"),  # Hydra's own advice for a typo; before: silently ignored
    ("+loss.temprature=0.1", "loss.temperature"),  # not an argument of the loss class
    ("+trainer.max_step=3", "trainer.max_steps"),  # not an argument of lightning.Trainer
    ("+ppo.epoch=2", "ppo.epochs"),
    # before: no suggestion; the optimizer's failed only after the model had loaded
    ("+callbacks.model_checkpoint.every_n_train_step=1", "callbacks.model_checkpoint.every_n_train_steps"),
    ("+optimizer.lrr=1e-5", "optimizer.lr"),
    ("+data.train.sizee=8", "data.train.size"),  # the data source's arguments
    ("+logger.csv.flush_logs_every_n_step=5", "logger.csv.flush_logs_every_n_steps"),
])
def test_an_added_key_nothing_reads_names_the_closest_key(tmp_path, override, meant):
    with pytest.raises(ConfigError, match=rf"\{override}.* nothing reads .*did you mean {meant}\?"):
        validate_config(compose_config([*TINY_OVERRIDES, override], output_dir=tmp_path))


def test_added_keys_that_something_reads_are_accepted(tmp_path):
    added = ["+trainer.limit_val_batches=1", "+data.train.system_prompt=Be brief.", "+optimizer.eps=1e-6",
             "+benchmark@data.val.gsm8k=gsm8k", "++rollout.new_forced_key=1",
             "+callbacks.extra={_target_:lightning.pytorch.callbacks.Timer}", "+model.tiny.rope_theta=10000.0",
             "~data.train", "+data.train={source:arith,size:8}"]  # a whole set replaced, as the README does
    cfg = compose_config([*TINY_OVERRIDES, *added], output_dir=tmp_path)
    from clipo.config.keys import unknown_key_problems

    assert unknown_key_problems(cfg) == []


def test_a_close_key_that_is_not_set_yet_is_offered_with_a_plus(tmp_path):
    # optimizer.amsgrad is an AdamW argument the config does not set: overriding it without '+' would fail
    with pytest.raises(ConfigError, match=r"did you mean optimizer.amsgrad\? \(add it with \+optimizer.amsgrad=...\)"):
        validate_config(compose_config([*TINY_OVERRIDES, "+optimizer.amsgrd=true"], output_dir=tmp_path))


@pytest.mark.parametrize("override, message", [
    # before: ZeroDivisionError / ValueError after loading, or a raw traceback
    ("rollout.group_size=0", "rollout.group_size=0: a group needs at least 2 rollouts to compare"),
    ("data.prompts_per_step=0", "data.prompts_per_step=0 must be at least 1"),
    ("rollout.max_new_tokens=0", "rollout.max_new_tokens=0 must be a token count >= 1"),
    ("rollout.temperature=-1", r"rollout.temperature=-1 must be a number >= 0 \(0: greedy\)"),
    ("rollout.top_p=0", r"rollout.top_p=0 must lie in \(0, 1\]"),
    ("rollout.top_k=-1", "rollout.top_k=-1 must be an integer >= 0"),
    ("ppo.micro_batch_size=0", "ppo.micro_batch_size=0 must be a count of rollouts >= 1, or null"),
    ("ppo.mini_batch_size=0", "ppo.mini_batch_size=0 must be a count of rollouts >= 1, or null"),
    ("validation.n=0", r"validation.n=0 \(samples per problem\) must be >= 1"),
    ("validation.temperature=-1", "validation.temperature=-1 must be a number >= 0"),
    ("data.val_batch_size=0", "data.val_batch_size=0 must be a count of prompts >= 1"),
    ("distributed.timeout_s=0", "distributed.timeout_s=0 must be a positive number of seconds or auto"),
    ("signals.grace_s=-1", "signals.grace_s=-1 must be a positive number of seconds, or null"),
    # before: 8 identical rollouts per prompt, zero gradients, no word
    ("rollout.temperature=0", "rollout.temperature=0 samples greedily: the rollouts of a prompt are then identical, "
                              "every group has zero reward variance, every advantage is 0 and the policy never learns"),
])
def test_sizes_and_sampling_settings_are_checked_before_the_model_loads(tmp_path, override, message):
    assert re.search(message, _errors([override], tmp_path))


def test_the_sampling_rules_are_the_parts_own():
    """The config check asks the part (`Sampling.problems`) instead of restating its rules: the engine's own
    settings refuse the same values."""
    from clipo.rollout.sampling import Sampling

    with pytest.raises(ValueError, match=r"top_p=0 must lie in \(0, 1\]"):
        Sampling(max_new_tokens=4, top_p=0)
    assert Sampling(max_new_tokens=4, temperature=0).greedy  # greedy decoding is fine for validation
    assert Sampling.problems(4, 0.0, 1.0, training=True)[0].startswith("temperature=0 samples greedily")
