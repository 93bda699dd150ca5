"""Measure a model's starting accuracy on the `arith` task (to tune its difficulty).

    python -m clipo.data.calibrate --model /tmp/smol --levels 0 1 2 --prompts 16 --samples 4

Samples `--samples` responses per prompt at temperature 1.0 and scores them as
clipo's default verifier does: the last `\\boxed{}` content, failing that the
last number, must equal the ground truth. Prints accuracy, the share of
responses with a `\\boxed{}`, and the share of prompts whose per-prompt accuracy
is strictly between 0 and 1 (those give GRPO groups a signal), per data source.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict

from clipo.data.arith import DEFAULT_INSTRUCTION, ArithDataset
from clipo.rollout.prompts import prompt_texts

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_answer(response: str) -> str | None:
    """The last `\\boxed{}` content, or failing that the last number in `response`."""
    boxed = _BOXED.findall(response)
    if boxed:
        return boxed[-1].strip()
    numbers = _NUMBER.findall(response)
    return numbers[-1] if numbers else None


def is_correct(response: str, ground_truth: str) -> bool:
    answer = extract_answer(response)
    if answer is None:
        return False
    try:
        return float(answer.replace(",", "").strip("$ ")) == float(ground_truth)
    except ValueError:
        return False


def sample(model_path: str, prompts: list[list[dict]], samples: int, max_new_tokens: int, batch: int) -> list[str]:
    """`samples` responses per prompt (prompt-major), temperature 1.0."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    texts = prompt_texts(tokenizer, [{"messages": messages} for messages in prompts])
    out = []
    for start in range(0, len(texts), batch):
        enc = tokenizer(texts[start : start + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            gen = model.generate(
                **enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=max_new_tokens,
                num_return_sequences=samples, pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
        out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="/tmp/smol")
    parser.add_argument("--levels", type=int, nargs="+", default=[0, 0, 1])
    parser.add_argument("--perturbations", nargs="+", default=["none"])
    parser.add_argument("--prompts", type=int, default=32, help="problems (each in every perturbation)")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16, help="prompts per generate call")
    parser.add_argument("--seed", type=int, default=1000, help="problem seed (away from training's 0)")
    parser.add_argument("--instruction", default=DEFAULT_INSTRUCTION)
    parser.add_argument("--show", type=int, default=0, help="print this many responses")
    args = parser.parse_args()

    import torch

    torch.manual_seed(0)
    records = ArithDataset(args.prompts, args.levels, args.perturbations, args.seed, args.instruction).records
    responses = sample(args.model, [r["messages"] for r in records], args.samples, args.max_new_tokens, args.batch)
    per_prompt: dict[str, list[float]] = defaultdict(list)
    boxed: dict[str, list[bool]] = defaultdict(list)
    for j, record in enumerate(records):
        chunk = responses[j * args.samples : (j + 1) * args.samples]
        per_prompt[record["data_source"]].append(sum(is_correct(r, record["ground_truth"]) for r in chunk) / len(chunk))
        boxed[record["data_source"]] += ["\\boxed{" in r for r in chunk]
    for j in range(min(args.show, len(responses))):
        print(f"--- {records[j // args.samples]['ground_truth']} | {responses[j]!r}")
    print(f"{'data_source':24s} prompts  accuracy  boxed  mixed")
    for source in sorted(per_prompt) + ["all"]:
        accs = per_prompt[source] if source != "all" else [a for v in per_prompt.values() for a in v]
        box = boxed[source] if source != "all" else [b for v in boxed.values() for b in v]
        mixed = sum(0 < a < 1 for a in accs) / len(accs)
        print(f"{source:24s} {len(accs):7d}  {sum(accs) / len(accs):8.3f}  {sum(box) / len(box):5.3f}  {mixed:5.3f}")


if __name__ == "__main__":
    main()
