"""The builtin tiny models' names and architectures (zoo.py builds them). Nothing here loads torch or
transformers, so a model name can be checked before they are imported (a typo is refused in a second)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xkd_cli.core.registry import Registry

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase


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
        from transformers import LlamaConfig, T5Config  # transformers (and torch) load only when a model is built

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
