"""Loading, building and saving the teacher and student models.

Every command refers to a model by one string (``--teacher tiny-t5-large``, ``--student my-run``,
``--model ./ckpt``, ``--teacher google/flan-t5-xl``). This module turns that string into a model and
its tokenizer, so the rest of xkd never cares where a model came from:

* builtin tiny models (zoo.py) make the whole pipeline runnable and testable on a CPU in minutes with
  no download;
* a run name refers to a model an earlier xkd command saved in the task's workspace;
* a local directory is anything ``save_pretrained`` wrote (a LoRA adapter loads onto its base: adapters.py);
* an alias or ``org/name`` goes to the Hugging Face hub (the only path that may touch the network).

Saved models are plain transformers checkpoints (safetensors + tokenizer files) so they load with
``AutoModelFor...`` and ``AutoTokenizer`` without xkd installed.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch
import transformers
from packaging import version
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from xkd_cli.config.core import DTYPES
from xkd_cli.core.errors import XKDError
from xkd_cli.core.hub import hub_unreachable
from xkd_cli.models.adapters import attach_adapter, base_reference, write_base_record
from xkd_cli.models.load_errors import hub_errors, remote_code_error, short_error
from xkd_cli.models.loaded_model import LoadedModel, set_generation_ids
from xkd_cli.models.quantization import quantization_config, release_checkpoint_mapping
from xkd_cli.models.references import is_adapter_dir, resolve_model
from xkd_cli.models.tokenizers import load_tokenizer
from xkd_cli.models.zoo import build_tiny_model

SOURCES = ("builtin", "run", "path", "hub")

# The --dtype names (declared with the option, in config/core.py) and what each loads as.
TORCH_DTYPES: dict[str, torch.dtype | str] = dict(zip(DTYPES, (torch.float32, torch.bfloat16, torch.float16, "auto"),
                                                      strict=True))

# transformers renamed from_pretrained's ``torch_dtype`` to ``dtype`` in 4.56 (the old name warns in 5.x).
_DTYPE_KWARG = "dtype" if version.parse(transformers.__version__) >= version.parse("4.56") else "torch_dtype"


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _parse_dtype(dtype: str) -> torch.dtype | str:
    try:
        return TORCH_DTYPES[dtype]
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


def _load_pretrained(
    ref: str, source: str, location: str, dtype: torch.dtype | str, quant_config: Any, device: torch.device,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, bool]:
    """Load a saved or hub checkpoint, choosing seq2seq vs causal LM from its config."""
    where = "the Hugging Face hub" if source == "hub" else location
    offline = hub_unreachable() if source == "hub" else None

    def unreachable(exc: BaseException) -> XKDError:
        if offline:
            return XKDError(f"could not load {ref!r}: {offline}, and it is not in the local Hugging Face cache. "
                            "Connect and retry, or pass a local model directory")
        if source == "hub":
            return XKDError(
                f"could not load {ref!r} from the Hugging Face hub (offline?): download it first or pass a "
                f"local path ({short_error(exc)})"
            )
        return XKDError(f"could not load model {ref!r} from {where} ({short_error(exc)}): re-save it or pick another")

    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    except ValueError as exc:  # unknown model_type / needs remote code
        if "trust_remote_code" in str(exc):
            raise remote_code_error(ref, exc) from exc
        raise XKDError(
            f"{ref!r} is not a model type transformers knows ({short_error(exc)}): pick a seq2seq or causal LM"
        ) from exc
    except hub_errors() as exc:
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
            f"({short_error(exc)}): xkd needs a text-generation model"
        ) from exc
    except hub_errors() as exc:
        raise unreachable(exc) from exc
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated safetensors, weights that do not fit the config, ...
        if type(exc).__name__ != "SafetensorError" and not isinstance(exc, RuntimeError):
            raise
        raise XKDError(f"could not load the weights of {ref!r} from {where} ({short_error(exc)}): the checkpoint is "
                       "corrupt or does not match its config.json; re-save it or pick another model") from exc
    if quant_config is not None:
        release_checkpoint_mapping(model)
    return model, is_enc_dec


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
    quant_config = quantization_config(quantization, torch_dtype)
    source, location = resolve_model(ref, task=task, runs_dir=runs_dir)

    if source in ("run", "path") and is_adapter_dir(location):
        loaded = _load_adapter_model(ref, source, location, task=task, runs_dir=runs_dir, dtype=dtype, device=device,
                                     quantization=quantization, for_training=for_training,
                                     trust_remote_code=trust_remote_code)
    elif source == "builtin" and quant_config is not None:
        # bitsandbytes quantizes while loading a checkpoint, so round-trip the tiny model through a
        # temporary directory; this keeps QLoRA code paths testable on tiny models.
        tiny = build_tiny_model(location)
        with tempfile.TemporaryDirectory(prefix="xkd-quant-") as tmp:
            save_model(tiny, Path(tmp) / "model")
            model, _ = _load_pretrained(ref, "path", str(Path(tmp) / "model"), torch_dtype, quant_config, dev)
        set_generation_ids(model, tiny.tokenizer)
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
        set_generation_ids(model, tokenizer)
        loaded = LoadedModel(model, tokenizer, ref, source, location, is_enc_dec)

    if quant_config is None:
        loaded.model.to(dev)
    if for_training:
        loaded.model.train()
    else:
        loaded.model.eval()
        loaded.model.requires_grad_(False)
    return loaded


def _load_adapter_model(ref: str, source: str, location: str, *, task: str | None, runs_dir: Path | None,
                        dtype: str, device: str, quantization: str | None, for_training: bool,
                        trust_remote_code: bool = False) -> LoadedModel:
    """A saved LoRA adapter on top of its base model, itself loaded like any model reference (quantized if
    asked, custom code allowed only with ``trust_remote_code``)."""
    base_ref = base_reference(Path(location), task, runs_dir)
    if Path(base_ref).resolve() == Path(location).resolve():
        raise XKDError(f"the adapter in {location} names itself as its base model: re-save it")
    base = load_model(base_ref, task=task, runs_dir=runs_dir, dtype=dtype, device=device, quantization=quantization,
                      for_training=True, trust_remote_code=trust_remote_code)
    return attach_adapter(base, ref, source, location, quantization=quantization, for_training=for_training,
                          trust_remote_code=trust_remote_code)


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
