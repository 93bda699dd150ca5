"""A sequence-classification model as a reward function (TRL's `reward_funcs="<model id>"`).

    python src/clipo/train.py 'reward_funcs=[verifier,OpenAssistant/reward-model-deberta-v3-large-v2]'

The score of a rollout is the model's first logit on prompt + completion, in the model's own
format: a conversational batch is the prompt's messages plus the assistant's completion through
the reward model's chat template, a plain-text batch is the prompt text followed by the
completion (TRL's `GRPOTrainer._calculate_rewards`). Batches of `batch_size` rollouts, right
padded, run on the policy's device (`RewardScorer` moves the model there), in float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clipo.rl.reward_inputs import TRL


class RewardModel:
    """Scores rollouts with a sequence-classification model and its own tokenizer.

    Args:
        name_or_path: hub id or local folder of the model (and its tokenizer).
        batch_size: rollouts per forward pass.
    """

    completions_format = TRL  # message lists for a conversational batch, as TRL hands them

    def __init__(self, name_or_path: str, batch_size: int = 16) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model = AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=1).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # the model scores the last token that is not padding, found with this id
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.__name__ = Path(str(name_or_path).rstrip("/")).name
        self.batch_size = batch_size

    def to(self, device: torch.device | str) -> RewardModel:
        self.model.to(device)
        return self

    def texts(self, prompts: list[Any], completions: list[Any]) -> list[str]:
        """What the model reads, one text per rollout."""
        if completions and isinstance(completions[0], list):  # conversational
            if not getattr(self.tokenizer, "chat_template", None):
                raise ValueError(f"reward model {self.__name__!r} has no chat template for conversational prompts; "
                                 "use a model whose tokenizer has one, or a data set with plain-text prompts")
            return [self.tokenizer.apply_chat_template(p + c, tokenize=False) for p, c in zip(prompts, completions)]
        return [p + c for p, c in zip(prompts, completions)]

    @torch.inference_mode()
    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        texts, device, scores = self.texts(prompts, completions), self.model.device, []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start : start + self.batch_size], return_tensors="pt", padding=True,
                                   padding_side="right", add_special_tokens=False).to(device)
            scores += self.model(**batch).logits[:, 0].float().tolist()
        return scores
