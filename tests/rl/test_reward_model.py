"""A sequence-classification reward model as a reward function: a tiny random classifier saved to a
folder, scored in padded batches, against calling the model by hand one rollout at a time."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForSequenceClassification

from clipo.models import build_tiny_tokenizer
from clipo.rl.reward_inputs import trl_prompts
from clipo.rl.reward_model import RewardModel
from clipo.rl.rewards import build_reward_functions, record_columns, score_rollouts
from clipo.rollout.batch import per_rollout


def save_tiny_classifier(folder, seed: int = 0):
    """A random Qwen2 classifier of a few thousand parameters with the tiny chat tokenizer."""
    tokenizer = build_tiny_tokenizer()
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    Qwen2ForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def by_hand(folder, texts):
    """Each text alone (no padding), through the folder's own tokenizer: the classifier's single logit."""
    model = Qwen2ForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        return [model(**tokenizer(t, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item() for t in texts]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return save_tiny_classifier(tmp_path_factory.mktemp("rm") / "tiny-rm")


RECORDS = [{"messages": [{"role": "user", "content": "2+2?"}], "ground_truth": "4"},
           {"messages": [{"role": "user", "content": "a much longer question?"}], "ground_truth": "x"}]
COMPLETIONS = ["4", "it is four, I think", "x", "y"]


def test_conversational_scores_match_the_model_called_by_hand(classifier):
    model = RewardModel(str(classifier), batch_size=3)  # batches of 3 and 1, right-padded
    prompts = trl_prompts(per_rollout(RECORDS, 2))
    completions = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    tokenizer = build_tiny_tokenizer()  # its own chat template, the whole conversation
    texts = [tokenizer.apply_chat_template(p + c, tokenize=False) for p, c in zip(prompts, completions)]
    assert texts[1].endswith("<|im_start|>assistant\nit is four, I think<|im_end|>\n")
    scores = model(prompts=prompts, completions=completions)
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(by_hand(classifier, texts)), atol=1e-5, rtol=1e-4)
    assert len(set(scores)) == 4  # padding did not make rollouts read the same token
    plain = model(prompts=["2+2?"] * 2, completions=["4", "five"])  # plain text: prompt + completion
    torch.testing.assert_close(torch.tensor(plain), torch.tensor(by_hand(classifier, ["2+2?4", "2+2?five"])),
                               atol=1e-5, rtol=1e-4)


def test_a_folder_in_reward_funcs_is_weighted_like_any_function(classifier):
    functions = build_reward_functions(["verifier", str(classifier)], [1.0, 0.5], lambda r, g: [0.0] * len(r))
    assert [f.name for f in functions] == ["verifier", "tiny-rm"]
    out = score_rollouts(functions, ["t"] * 4, COMPLETIONS, [[1]] * 4, record_columns(per_rollout(RECORDS, 2)), None,
                         trl_prompts(per_rollout(RECORDS, 2)))
    direct = RewardModel(str(classifier))(trl_prompts(per_rollout(RECORDS, 2)), [[{"role": "assistant", "content": c}]
                                                                   for c in COMPLETIONS])
    torch.testing.assert_close(out.scores[:, 1], torch.tensor(direct))
    torch.testing.assert_close(out.total, 0.5 * torch.tensor(direct))
