"""What every way of loading a model returns (:class:`LoadedModel`: the model with its tokenizer and where it
came from), and small helpers on a model: its real vocabulary size, its parameter count, its generation ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class LoadedModel:
    """A model together with the tokenizer it must be used with and where it came from.

    ``name`` is what the user typed (for messages); ``location`` is what it resolved to (a path, a
    hub id or a builtin name) so runs can record exactly which model they used.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    source: str
    location: str
    is_encoder_decoder: bool
    adapter_base: dict[str, Any] | None = None
    """For a LoRA model (a peft model): the base it adapts (see adapters.py); saved beside the adapter."""
    chat: Any = None
    """The chat format its prompts are rendered with (xkd_cli.models.chat.ChatFormat), None for raw prompts."""


def model_vocab_size(loaded: LoadedModel) -> int:
    """Number of real tokens (``len(tokenizer)``), not embedding rows: logits beyond it are padding."""
    return len(loaded.tokenizer)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters; ``parameters()`` yields tied tensors (T5/Llama embeddings) only once.

    For bitsandbytes-quantized models this counts stored elements (4-bit weights pack two per byte).
    """
    return sum(p.numel() for p in model.parameters())


def set_generation_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Fill in missing pad/eos/start ids so ``generate`` needs no per-call ids and never warns.

    Only missing values are filled: a checkpoint's own generation config may list several stop ids.
    """
    gen = model.generation_config
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    if gen.eos_token_id is None:
        gen.eos_token_id = tokenizer.eos_token_id
    if model.config.is_encoder_decoder:
        if gen.decoder_start_token_id is None:
            gen.decoder_start_token_id = model.config.decoder_start_token_id
    elif gen.bos_token_id is None:
        gen.bos_token_id = tokenizer.bos_token_id

