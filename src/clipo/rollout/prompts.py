"""A record's prompt as every part sees it: its chat messages through the tokenizer's chat template,
with the generation prompt. The engines tokenize this text and the reward functions receive it."""

from __future__ import annotations

from typing import Any


def prompt_text(tokenizer: Any, record: dict) -> str:
    return tokenizer.apply_chat_template(record["messages"], add_generation_prompt=True, tokenize=False)


def prompt_texts(tokenizer: Any, records: list[dict]) -> list[str]:
    return [prompt_text(tokenizer, record) for record in records]
