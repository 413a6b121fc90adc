"""The builtin tiny models: randomly initialised with a fixed seed, they make the whole pipeline runnable and
testable on a CPU in minutes with no download. All but one share one byte-level BPE tokenizer; tiny-gpt-uni
reads a SentencePiece-style Unigram tokenizer, so distillation across tokenizers can be tried offline."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast, T5ForConditionalGeneration

from xkd_cli.core.errors import XKDError
from xkd_cli.models.loaded_model import LoadedModel, set_generation_ids
from xkd_cli.models.specs import BUILTIN_MODELS, TinyModelSpec

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
