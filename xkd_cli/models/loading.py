"""Loading, building and saving the teacher and student models.

Every command refers to a model by one string (``--teacher tiny-t5-large``, ``--student my-run``,
``--model ./ckpt``, ``--teacher google/flan-t5-xl``). This module turns that string into a model and
its tokenizer, so the rest of xkd never cares where a model came from:

* builtin tiny models (randomly initialised, fixed seed, shared byte-level tokenizer) make the whole
  pipeline runnable and testable on a CPU in minutes with no download;
* a run name refers to a model an earlier xkd command saved in the task's workspace;
* a local directory is anything ``save_pretrained`` wrote;
* an alias or ``org/name`` goes to the Hugging Face hub (the only path that may touch the network).

Saved models are plain transformers checkpoints (safetensors + tokenizer files) so they load with
``AutoModelFor...`` and ``AutoTokenizer`` without xkd installed.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from packaging import version
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from xkd_cli.core.errors import XKDError
from xkd_cli.core.registry import Registry

TOKENIZER_FILE = Path(__file__).resolve().parents[1] / "assets" / "tokenizer" / "tokenizer.json"
"""The byte-level BPE tokenizer shared by all builtin models (``<pad>``=0, ``</s>``=1, ``<unk>``=2).
One tokenizer for every tiny model is what lets any tiny teacher distil into any tiny student."""

PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "</s>", "<unk>"

SOURCES = ("builtin", "run", "path", "hub")

HUB_ALIASES: dict[str, str] = {
    "t5-small": "google-t5/t5-small",
    "t5-base": "google-t5/t5-base",
    "t5-large": "google-t5/t5-large",
    "t5-xl": "google/t5-v1_1-xl",
}
"""Short names for the paper's T5 models. The hub moved the original checkpoints under ``google-t5/``;
there is no v1.0 "xl" (the 3B model is ``t5-3b``), so ``t5-xl`` means the v1.1 XL checkpoint."""

DTYPES: dict[str, torch.dtype | str] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "auto": "auto",
}

QUANTIZATIONS = ("8bit", "4bit")

# transformers renamed from_pretrained's ``torch_dtype`` to ``dtype`` in 4.56 (the old name warns in 5.x).
_DTYPE_KWARG = "dtype" if version.parse(transformers.__version__) >= version.parse("4.56") else "torch_dtype"


# ---------------------------------------------------------------------------------------------
# Result type
# ---------------------------------------------------------------------------------------------


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
    """For a LoRA model (a peft model): the base it adapts (see lora.py); saved beside the adapter."""


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------


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


def builtin_tokenizer() -> PreTrainedTokenizerFast:
    """The tokenizer of every builtin tiny model.

    Parsed once and cached; each call returns a copy because callers set ``padding_side`` (left for
    decoder-only generation, right for training) and must not change it under each other's feet.
    """
    return copy.deepcopy(_builtin_tokenizer_cached(str(TOKENIZER_FILE)))


@functools.lru_cache(maxsize=None)
def _load_tokenizer_cached(location: str, stamp: tuple[int, ...], trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    del stamp  # only part of the cache key: see _files_stamp
    try:
        return AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise remote_code_error(location, exc) from exc
        raise XKDError(f"could not load a tokenizer from {location!r} ({_short(exc)}): "
                       "point at a directory saved by xkd or transformers, or download the hub model first") from exc
    except Exception as exc:  # noqa: BLE001 - many error types; all mean "cannot read this tokenizer"
        raise XKDError(
            f"could not load a tokenizer from {location!r} ({_short(exc)}): "
            "point at a directory saved by xkd or transformers, or download the hub model first"
        ) from exc


def _files_stamp(location: str) -> tuple[int, ...]:
    """Modification times of a local directory's tokenizer files, so a re-saved run is re-read."""
    directory = Path(location)
    if not directory.is_dir():
        return ()
    return tuple(sorted(f.stat().st_mtime_ns for f in directory.glob("*token*")))


def load_tokenizer(location: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Tokenizer of a builtin name, saved directory or hub id (cached; returns a private copy)."""
    if location in BUILTIN_MODELS:
        return builtin_tokenizer()
    location = str(location)
    directory = Path(location)
    if directory.is_dir() and not any((directory / f).is_file() for f in TOKENIZER_FILES):
        # transformers would silently build an empty default tokenizer (e.g. T5's 100 sentinel tokens)
        raise XKDError(f"{location} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...): save the "
                       "tokenizer beside the model (tokenizer.save_pretrained(DIR)) or pick a model saved by xkd")
    return copy.deepcopy(_load_tokenizer_cached(location, _files_stamp(location), trust_remote_code))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "tokenizer.model", "vocab.json",
                   "vocab.txt", "sentencepiece.bpe.model")
"""Files of which a saved tokenizer has at least one (fast, slow sentencepiece, BPE and WordPiece layouts)."""


def remote_code_error(ref: str, exc: BaseException) -> XKDError:
    """A model or tokenizer that needs its own Python code, which xkd runs only when asked."""
    return XKDError(f"{ref!r} needs custom code shipped with the model (auto_map) to load, and xkd does not run "
                    "a model's own code unless asked: review that code, then pass --trust-remote-code "
                    "(or pick a model transformers supports natively)")


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A short hash of what makes two tokenizers interchangeable (token -> id map and special ids), so data
    made with one tokenizer can be checked against another without loading the first again."""
    import hashlib
    import json

    specials = [getattr(tokenizer, a) for a in ("pad_token_id", "eos_token_id", "bos_token_id", "unk_token_id")]
    text = json.dumps([sorted(tokenizer.get_vocab().items()), specials], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def check_same_tokenizer(
    teacher_tok: PreTrainedTokenizerBase,
    student_tok: PreTrainedTokenizerBase,
    teacher_name: str,
    student_name: str,
) -> int:
    """Fail before any compute unless teacher and student tokenize identically; return ``len(tok)``.

    Distillation compares the two models' distributions position by position and token id by token
    id, so different vocabularies would silently compare unrelated tokens. We compare the full
    token → id maps (including added tokens) and the special-token ids, not just sizes. The returned
    size is what callers slice logits to: checkpoints may pad the embedding beyond the tokenizer
    (T5: 32128 rows for 32100 tokens), and the padding rows are not tokens.
    """
    t_size, s_size = len(teacher_tok), len(student_tok)
    t_vocab, s_vocab = teacher_tok.get_vocab(), student_tok.get_vocab()
    prefix = f"teacher {teacher_name!r} and student {student_name!r} use different tokenizers"
    fix = "pick a student and teacher from the same model family (same tokenizer)"
    if t_size != s_size:
        raise XKDError(f"{prefix}: {t_size} vs {s_size} tokens; {fix}")
    if t_vocab != s_vocab:
        t_by_id = {i: t for t, i in t_vocab.items()}
        s_by_id = {i: t for t, i in s_vocab.items()}
        for i in sorted(set(t_by_id) | set(s_by_id)):
            if t_by_id.get(i) != s_by_id.get(i):
                raise XKDError(
                    f"{prefix}: token id {i} is {t_by_id.get(i)!r} for the teacher but "
                    f"{s_by_id.get(i)!r} for the student; {fix}"
                )
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id", "unk_token_id"):
        t_id, s_id = getattr(teacher_tok, attr), getattr(student_tok, attr)
        if t_id != s_id:
            raise XKDError(f"{prefix}: {attr} is {t_id} for the teacher but {s_id} for the student; {fix}")
    return t_size


def model_vocab_size(loaded: LoadedModel) -> int:
    """Number of real tokens (``len(tokenizer)``), not embedding rows: logits beyond it are padding."""
    return len(loaded.tokenizer)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters; ``parameters()`` yields tied tensors (T5/Llama embeddings) only once.

    For bitsandbytes-quantized models this counts stored elements (4-bit weights pack two per byte).
    """
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Builtin tiny models
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyModelSpec:
    """Architecture of one builtin model; the vocabulary size comes from the shared tokenizer."""

    family: str  # "t5" (encoder-decoder) or "llama" (decoder-only)
    description: str
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

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


def build_tiny_model(name: str) -> LoadedModel:
    """Build a builtin model with fixed-seed random weights (identical on every call).

    The seed is applied inside ``torch.random.fork_rng`` so building a model never changes the
    caller's global RNG stream (a training run's seed must mean the same thing whether or not it
    built a teacher first).
    """
    spec = BUILTIN_MODELS.get(name)
    tokenizer = builtin_tokenizer()
    config = spec.make_config(tokenizer)
    model_cls = T5ForConditionalGeneration if spec.is_encoder_decoder else LlamaForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = model_cls(config)
    _set_generation_ids(model, tokenizer)
    model.eval()
    return LoadedModel(model, tokenizer, name, "builtin", name, spec.is_encoder_decoder)


def _set_generation_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
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


# ---------------------------------------------------------------------------------------------
# Resolving a reference
# ---------------------------------------------------------------------------------------------


def _looks_like_path(ref: str) -> bool:
    """True for strings that can only be meant as a filesystem path.

    A hub id ``org/name`` also contains "/", so a single inner slash is not enough: a path is
    anything absolute, starting with "." or "~", with a trailing or repeated separator, or with
    a separator hub ids never use (backslash on Windows).
    """
    if ref.startswith(("/", ".", "~")) or ref.endswith("/"):
        return True
    if any(sep in ref for sep in (os.sep, os.altsep) if sep and sep != "/"):
        return True
    return ref.count("/") > 1


def _valid_names_text() -> str:
    aliases = ", ".join(f"{a} (= {h})" for a, h in HUB_ALIASES.items())
    return (
        f"builtin models: {', '.join(BUILTIN_MODELS.names())}; aliases: {aliases}; "
        "a run name of the task, a local model directory (with config.json, or a LoRA adapter) or a hub id "
        "'org/name' also works"
    )


def _is_model_dir(path: Path) -> bool:
    """A full checkpoint (config.json) or a LoRA adapter (adapter_config.json, loaded onto its base)."""
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def _not_a_model_run(ref: str, run_dir: Path) -> XKDError:
    """A run that holds no model (gen-teacher samples, an eval, a judge...) named where a model is expected."""
    from xkd_cli.core.workspace import read_record

    kind = read_record(run_dir / "run.json").get("kind")
    return XKDError(f"{ref!r} is an xkd {kind} run ({run_dir}), which holds no model: pass an sft or distill run, "
                    "a model directory or a built-in model name")


def resolve_model(ref: str, *, task: str | None = None, runs_dir: Path | None = None) -> tuple[str, str]:
    """Turn what the user typed into ``(source, location)`` without loading anything.

    Order: builtin name, run of ``task`` (``<runs_dir>/<task>/<ref>/model``), existing local
    directory, alias, hub id. Builtins come first so a stray local folder called ``tiny-t5-small``
    cannot change what a recipe means; run names before paths so a run is found from any working
    directory. A path that does not exist is an error rather than a hub lookup, so a typo gives a
    clear message instead of a network error. Run lookup needs both ``task`` and ``runs_dir``.
    """
    ref = ref.strip()
    if not ref:
        raise XKDError(f"empty model name: pass one of the {_valid_names_text()}")
    if ref in BUILTIN_MODELS:
        return "builtin", ref
    if task is not None and runs_dir is not None and not _looks_like_path(ref) and "/" not in ref:
        run_model = Path(runs_dir) / task / ref / "model"
        if _is_model_dir(run_model):
            return "run", str(run_model.resolve())
        if (run_model.parent / "run.json").is_file():
            raise _not_a_model_run(ref, run_model.parent)
    local = Path(ref).expanduser()
    if local.exists():
        if local.is_dir() and (local / "run.json").is_file():  # an xkd run directory: its model/, if it has one
            if _is_model_dir(local / "model"):
                return "path", str((local / "model").resolve())
            raise _not_a_model_run(ref, local)
        if local.is_dir() and _is_model_dir(local):
            return "path", str(local.resolve())
        raise XKDError(
            f"{ref!r} is not a model directory (no config.json or adapter_config.json in it): pass a directory "
            "written by `xkd train`/`save_pretrained`, or a model name"
        )
    if _looks_like_path(ref):
        raise XKDError(f"no such model directory: {ref!r}; check the path, or pass a model name")
    if ref in HUB_ALIASES:
        return "hub", HUB_ALIASES[ref]
    if "/" in ref:
        return "hub", ref
    candidates = BUILTIN_MODELS.names() + list(HUB_ALIASES)
    close = difflib.get_close_matches(ref, candidates, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    runs_hint = f" (no run {ref!r} for task {task!r})" if task is not None and runs_dir is not None else ""
    raise XKDError(f"unknown model {ref!r}{runs_hint}.{hint} Valid: {_valid_names_text()}.")


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _parse_dtype(dtype: str) -> torch.dtype | str:
    try:
        return DTYPES[dtype]
    except KeyError:
        raise XKDError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}") from None


def _parse_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise XKDError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise XKDError(f"device {device!r} requested but CUDA is not available: pass --device cpu")
    return dev


def _quantization_config(quantization: str | None, dtype: torch.dtype | str) -> Any:
    """BitsAndBytesConfig for 8/4-bit loading (QLoRA-style teachers/students), or None."""
    if quantization is None:
        return None
    if quantization not in QUANTIZATIONS:
        raise XKDError(f"unknown quantization {quantization!r}: use one of {', '.join(QUANTIZATIONS)} or none")
    try:
        importlib.import_module("bitsandbytes")  # checked here so the error names the fix, not a deep import
        from transformers import BitsAndBytesConfig
    except Exception as exc:  # noqa: BLE001 - any import failure means bitsandbytes is unusable here
        raise XKDError(
            f"--quantization {quantization} needs bitsandbytes ({_short(exc)}): "
            "`pip install bitsandbytes`, or drop --quantization"
        ) from exc
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = dtype if isinstance(dtype, torch.dtype) else torch.bfloat16
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


def _hub_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'could not reach or find the files', whatever HTTP client is used."""
    errors: list[type[BaseException]] = [OSError, ConnectionError, TimeoutError]
    try:
        from huggingface_hub.errors import HfHubHTTPError

        errors.append(HfHubHTTPError)
    except ImportError:  # pragma: no cover - older huggingface_hub
        pass
    for module, name in (("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _short(exc: BaseException) -> str:
    """First line of an exception message, so XKDError stays one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _load_pretrained(
    ref: str, source: str, location: str, dtype: torch.dtype | str, quant_config: Any, device: torch.device,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, bool]:
    """Load a saved or hub checkpoint, choosing seq2seq vs causal LM from its config."""
    where = "the Hugging Face hub" if source == "hub" else location

    def unreachable(exc: BaseException) -> XKDError:
        if source == "hub":
            return XKDError(
                f"could not load {ref!r} from the Hugging Face hub (offline?): download it first or pass a "
                f"local path ({_short(exc)})"
            )
        return XKDError(f"could not load model {ref!r} from {where} ({_short(exc)}): re-save it or pick another")

    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    except ValueError as exc:  # unknown model_type / needs remote code
        if "trust_remote_code" in str(exc):
            raise remote_code_error(ref, exc) from exc
        raise XKDError(
            f"{ref!r} is not a model type transformers knows ({_short(exc)}): pick a seq2seq or causal LM"
        ) from exc
    except _hub_errors() as exc:
        raise unreachable(exc) from exc
    is_enc_dec = bool(getattr(config, "is_encoder_decoder", False))
    auto_cls = AutoModelForSeq2SeqLM if is_enc_dec else AutoModelForCausalLM
    kwargs: dict[str, Any] = {"config": config, _DTYPE_KWARG: dtype, "trust_remote_code": trust_remote_code}
    if quant_config is not None:
        kwargs["quantization_config"] = quant_config
        kwargs["device_map"] = {"": str(device)}  # bitsandbytes places weights while quantizing
    try:
        model = auto_cls.from_pretrained(location, **kwargs)
    except ValueError as exc:  # e.g. a config class with no seq2seq/causal LM head
        raise XKDError(
            f"{ref!r} cannot be loaded as a {'seq2seq' if is_enc_dec else 'causal'} language model "
            f"({_short(exc)}): xkd needs a text-generation model"
        ) from exc
    except _hub_errors() as exc:
        raise unreachable(exc) from exc
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated safetensors, weights that do not fit the config, ...
        if type(exc).__name__ != "SafetensorError" and not isinstance(exc, RuntimeError):
            raise
        raise XKDError(f"could not load the weights of {ref!r} from {where} ({_short(exc)}): the checkpoint is "
                       "corrupt or does not match its config.json; re-save it or pick another model") from exc
    if quant_config is not None:
        _release_checkpoint_mapping(model)
    return model, is_enc_dec


_QUANTIZED_PARAMS = ("Params4bit", "Int8Params")


def _release_checkpoint_mapping(model: PreTrainedModel) -> None:
    """Give a quantized model's unquantized CPU tensors memory of their own.

    transformers memory-maps safetensors and leaves unquantized tensors (norms, embeddings, T5's float32
    ``wo`` layers) as views of that mapping. One such view keeps the whole file mapped, and every page
    read while quantizing stays resident: a 4-bit model would hold its full-precision checkpoint in RAM.
    Copying the few unquantized tensors drops the mapping (measured in bench/memory.py).
    """
    for param in model.parameters():  # tied weights are one Parameter: copied once, still tied
        if param.device.type == "cpu" and type(param).__name__ not in _QUANTIZED_PARAMS:
            param.data = param.data.clone()
    for module in model.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.device.type == "cpu":
                module._buffers[name] = buffer.clone()


def load_model(
    ref: str,
    *,
    task: str | None = None,
    runs_dir: Path | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    for_training: bool = True,
    quantization: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Resolve ``ref`` (see :func:`resolve_model`) and load the model with its tokenizer.

    ``dtype="float32"`` is the default on purpose: transformers 5 loads checkpoints in their stored
    dtype ("auto") unless told otherwise, which would make tiny-vs-hub runs behave differently.
    ``for_training=False`` (teachers, evaluation) puts the model in eval mode and freezes its
    parameters, so no optimizer can touch it and autograd keeps no state for it.
    """
    torch_dtype = _parse_dtype(dtype)
    dev = _parse_device(device)
    quant_config = _quantization_config(quantization, torch_dtype)
    source, location = resolve_model(ref, task=task, runs_dir=runs_dir)

    if source in ("run", "path") and (Path(location) / "adapter_config.json").is_file():
        from xkd_cli.models.lora import load_adapter_model

        loaded = load_adapter_model(ref, source, location, task=task, runs_dir=runs_dir, dtype=dtype, device=device,
                                    quantization=quantization, for_training=for_training,
                                    trust_remote_code=trust_remote_code)
    elif source == "builtin" and quant_config is not None:
        # bitsandbytes quantizes while loading a checkpoint, so round-trip the tiny model through a
        # temporary directory; this keeps QLoRA code paths testable on tiny models.
        tiny = build_tiny_model(location)
        with tempfile.TemporaryDirectory(prefix="xkd-quant-") as tmp:
            save_model(tiny, Path(tmp) / "model")
            model, _ = _load_pretrained(ref, "path", str(Path(tmp) / "model"), torch_dtype, quant_config, dev)
        _set_generation_ids(model, tiny.tokenizer)
        loaded = LoadedModel(model, tiny.tokenizer, ref, "builtin", location, tiny.is_encoder_decoder)
    elif source == "builtin":
        loaded = build_tiny_model(location)
        if isinstance(torch_dtype, torch.dtype):
            loaded.model.to(dtype=torch_dtype)
        loaded.name = ref
    else:
        model, is_enc_dec = _load_pretrained(ref, source, location, torch_dtype, quant_config, dev, trust_remote_code)
        tokenizer = load_tokenizer(location, trust_remote_code=trust_remote_code)
        if not is_enc_dec and tokenizer.pad_token is None:
            # Many decoder-only checkpoints ship without a pad token; batching needs one, and every
            # padded position is masked, so reusing </s> is safe.
            tokenizer.pad_token = tokenizer.eos_token
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            raise XKDError(
                f"model {ref!r} has {model.get_input_embeddings().num_embeddings} embedding rows but its "
                f"tokenizer has {len(tokenizer)} tokens: the checkpoint and tokenizer do not match"
            )
        _set_generation_ids(model, tokenizer)
        loaded = LoadedModel(model, tokenizer, ref, source, location, is_enc_dec)

    if quant_config is None:
        loaded.model.to(dev)
    if for_training:
        loaded.model.train()
    else:
        loaded.model.eval()
        loaded.model.requires_grad_(False)
    return loaded


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


def save_model(
    loaded_or_model_and_tokenizer: LoadedModel | tuple[PreTrainedModel, PreTrainedTokenizerBase],
    directory: str | os.PathLike[str],
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save model (safetensors) and tokenizer so plain transformers Auto classes can load them.
    ``state_dict``: the weights to write instead of the model's own (a sharded model's gathered weights).

    Everything is written into a temporary sibling directory first and then renamed into place, so
    a crash mid-save leaves either the old model or the new one, never a half-written directory
    that a later ``--model`` would load. An existing directory is replaced.
    """
    if isinstance(loaded_or_model_and_tokenizer, LoadedModel):
        model, tokenizer = loaded_or_model_and_tokenizer.model, loaded_or_model_and_tokenizer.tokenizer
    else:
        model, tokenizer = loaded_or_model_and_tokenizer
    target = Path(directory).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = target.parent / f".{target.name}.tmp-{tag}"
    old = target.parent / f".{target.name}.old-{tag}"
    try:
        if hasattr(model, "peft_config"):
            # A peft model writes only its adapter. Embeddings are never adapted or resized here, so peft
            # need not look the base up (on the hub, for a builtin name) to decide whether to save them.
            model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
        else:
            model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        base = getattr(loaded_or_model_and_tokenizer, "adapter_base", None)
        if base is not None:
            from xkd_cli.models.lora import write_base_record

            write_base_record(tmp, base)
        if target.exists():
            # os.replace cannot overwrite a non-empty directory: move the old one aside first.
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            os.replace(old, target)
        error = _as_os_error(exc)
        if error is exc:
            raise
        raise error from None
    shutil.rmtree(old, ignore_errors=True)
    return target


def _as_os_error(exc: BaseException) -> BaseException:
    """safetensors reports a failed write (full disk, file size limit) as its own error type with the OS
    error number in the text; give it back as the OSError it is, so callers handle every write failure alike."""
    found = re.search(r"os error (\d+)", str(exc)) if type(exc).__name__ == "SafetensorError" else None
    if found is None:
        return exc
    number = int(found.group(1))
    return OSError(number, os.strerror(number))
