"""The builtin tiny models: randomly initialised with a fixed seed, they make the whole pipeline runnable and
testable on a CPU in minutes with no download. All but one share one byte-level BPE tokenizer; tiny-gpt-uni
reads a SentencePiece-style Unigram tokenizer, so distillation across tokenizers can be tried offline."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from xkd_cli.core.errors import XKDError
from xkd_cli.core.registry import Registry
from xkd_cli.models.loaded_model import LoadedModel, set_generation_ids

ASSETS = Path(__file__).resolve().parents[1] / "assets"
TOKENIZER_FILE = ASSETS / "tokenizer" / "tokenizer.json"
"""The byte-level BPE tokenizer shared by the builtin models (``<pad>``=0, ``</s>``=1, ``<unk>``=2).
One tokenizer for these tiny models is what lets any of them distil into any other token by token."""
UNIGRAM_TOKENIZER_FILE = ASSETS / "tokenizer_unigram" / "tokenizer.json"
"""A Unigram tokenizer with ``▁`` word boundaries and byte fallback (``<unk>``=0, ``<pad>``=1, ``</s>``=2;
scripts/build_unigram_tokenizer.py): a different kind of tokenizer, for distillation across tokenizers."""
BUILTIN_TOKENIZERS = {"bpe": TOKENIZER_FILE, "unigram": UNIGRAM_TOKENIZER_FILE}

PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "</s>", "<unk>"


@functools.lru_cache(maxsize=None)
def _builtin_tokenizer_cached(path: str) -> PreTrainedTokenizerFast:
    if not Path(path).is_file():
        raise XKDError(
            f"the builtin tokenizer file {path} is missing: reinstall xkd (the file ships with the package)"
        )
    return PreTrainedTokenizerFast(
        tokenizer_file=path,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        bos_token=EOS_TOKEN,  # decoder-only models start from </s>, as in T5 there is no separate <s>
        clean_up_tokenization_spaces=False,  # byte-level BPE is lossless; "a , b" must decode unchanged
    )


def builtin_tokenizer(kind: str = "bpe") -> PreTrainedTokenizerFast:
    """A builtin tokenizer: ``bpe`` (every builtin model but tiny-gpt-uni) or ``unigram`` (tiny-gpt-uni).

    Parsed once and cached; each call returns a copy because callers set ``padding_side`` (left for
    decoder-only generation, right for training) and must not change it under each other's feet.
    """
    return copy.deepcopy(_builtin_tokenizer_cached(str(BUILTIN_TOKENIZERS[kind])))


# ChatML, as SmolLM2 and Qwen write it: the tiny chat models exercise the chat path of a real instruct model.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")


def chat_tokenizer() -> PreTrainedTokenizerFast:
    """The builtin tokenizer plus ChatML's two special tokens and template (the tiny chat models')."""
    tokenizer = builtin_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(CHAT_TOKENS)})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


@dataclass(frozen=True)
class TinyModelSpec:
    """Architecture of one builtin model; the vocabulary size comes from the shared tokenizer."""

    family: str  # "t5" (encoder-decoder) or "llama" (decoder-only)
    description: str
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    tokenizer: str = "bpe"  # a key of BUILTIN_TOKENIZERS
    chat: bool = False  # the chat tokenizer (ChatML template and tokens) instead of the plain one

    @property
    def is_encoder_decoder(self) -> bool:
        return self.family == "t5"

    def make_config(self, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
        ids = dict(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        if self.family == "t5":
            # T5 v1.0 layout (relu FFN, tied embeddings scaled by d_model**-0.5), like google-t5/t5-*,
            # so a tiny run exercises the same code paths as the paper's models.
            return T5Config(
                **ids,
                decoder_start_token_id=tokenizer.pad_token_id,
                feed_forward_proj="relu",
                tie_word_embeddings=True,
                dropout_rate=0.0,
                relative_attention_num_buckets=32,
                relative_attention_max_distance=128,
                **self.config,
            )
        # Llama (RoPE) rather than GPT-2: positions come from the attention mask during generation, so
        # left-padded batches with a KV cache give the same tokens as unpadded single prompts.
        return LlamaConfig(
            **ids,
            bos_token_id=tokenizer.bos_token_id,
            tie_word_embeddings=True,
            max_position_embeddings=1024,
            attention_dropout=0.0,
            rms_norm_eps=1e-5,
            **self.config,
        )


BUILTIN_MODELS: Registry[TinyModelSpec] = Registry("builtin model")
BUILTIN_MODELS.register(
    "tiny-t5-small",
    TinyModelSpec(
        "t5",
        "tiny T5 student (~1M params)",
        dict(d_model=128, d_kv=32, num_heads=4, d_ff=512, num_layers=2, num_decoder_layers=2),
        seed=1,
    ),
)
BUILTIN_MODELS.register(
    "tiny-t5-base",
    TinyModelSpec(
        "t5",
        "tiny T5 (~3M params)",
        dict(d_model=192, d_kv=32, num_heads=6, d_ff=640, num_layers=3, num_decoder_layers=3),
        seed=2,
    ),
)
BUILTIN_MODELS.register(
    "tiny-t5-large",
    TinyModelSpec(
        "t5",
        "tiny T5 teacher (~8M params)",
        dict(d_model=256, d_kv=32, num_heads=8, d_ff=1024, num_layers=4, num_decoder_layers=4),
        seed=3,
    ),
)
BUILTIN_MODELS.register(
    "tiny-gpt-small",
    TinyModelSpec(
        "llama",
        "tiny decoder-only student (~1M params)",
        dict(hidden_size=128, intermediate_size=384, num_attention_heads=4, num_key_value_heads=4,
             num_hidden_layers=4),
        seed=4,
    ),
)
BUILTIN_MODELS.register(
    "tiny-gpt-large",
    TinyModelSpec(
        "llama",
        "tiny decoder-only teacher (~8M params)",
        dict(hidden_size=256, intermediate_size=1024, num_attention_heads=8, num_key_value_heads=8,
             num_hidden_layers=7),
        seed=5,
    ),
)
BUILTIN_MODELS.register(
    "tiny-gpt-uni",
    TinyModelSpec(
        "llama",
        "tiny decoder-only student on a Unigram tokenizer (~1M params; pair it with a BPE teacher and "
        "--cross-tokenizer)",
        dict(hidden_size=128, intermediate_size=384, num_attention_heads=4, num_key_value_heads=4,
             num_hidden_layers=4),
        seed=6,
        tokenizer="unigram",
    ),
)
for _name, _base in (("tiny-chat-small", "tiny-gpt-small"), ("tiny-chat-large", "tiny-gpt-large")):
    _spec = BUILTIN_MODELS.get(_base)
    BUILTIN_MODELS.register(_name, TinyModelSpec("llama", _spec.description.replace("decoder-only", "chat (ChatML)"),
                                                 _spec.config, seed=_spec.seed, chat=True))


def spec_tokenizer(spec: TinyModelSpec) -> PreTrainedTokenizerFast:
    """The tokenizer a builtin model is built with."""
    return chat_tokenizer() if spec.chat else builtin_tokenizer(spec.tokenizer)


def build_tiny_model(name: str) -> LoadedModel:
    """Build a builtin model with fixed-seed random weights (identical on every call).

    The seed is applied inside ``torch.random.fork_rng`` so building a model never changes the
    caller's global RNG stream (a training run's seed must mean the same thing whether or not it
    built a teacher first).
    """
    spec = BUILTIN_MODELS.get(name)
    tokenizer = spec_tokenizer(spec)
    config = spec.make_config(tokenizer)
    model_cls = T5ForConditionalGeneration if spec.is_encoder_decoder else LlamaForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = model_cls(config)
    set_generation_ids(model, tokenizer)
    model.eval()
    return LoadedModel(model, tokenizer, name, "builtin", name, spec.is_encoder_decoder)
